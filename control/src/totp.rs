//! Two-factor sign-in: TOTP (RFC 6238: HMAC-SHA1, six digits, 30-second
//! steps, the parameters every authenticator app understands) through
//! the `totp-rs` crate, and single-use recovery codes.
//!
//! - Enrolment keeps a new secret *pending*; it takes effect only when a
//!   code from it is confirmed, so a scan that went wrong cannot lock the
//!   account.
//! - A code is accepted for the step before, at and after now (clocks
//!   drift), and each step once: the last step used is stored, a replayed
//!   code fails.
//! - Recovery codes are 80 random bits each, stored only as SHA-256 (like
//!   every other secret the control plane hands out), and used up by use.
//! - Time comes in as an argument (seconds since 1970), from the control
//!   plane's clock, so tests can set it.
//!
//! The TOTP secret itself cannot be hashed (the code is computed from
//! it); it sits in the database like the admissions' preshared keys.

use crate::store::{self, Tx};
use base64::Engine;
use rand::RngCore;
use totp_rs::{Algorithm, TOTP};

/// The issuer name authenticator apps show next to the account.
pub const ISSUER: &str = "hushgate";
/// Seconds per code.
pub const STEP: u64 = 30;
/// How many recovery codes an enrolment gives.
pub const RECOVERY_CODES: usize = 10;

/// A fresh 160-bit secret (RFC 4226's recommended length).
pub fn new_secret() -> Vec<u8> {
    let mut raw = vec![0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    raw
}

fn totp(secret: &[u8], account: &str) -> Result<TOTP, String> {
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        STEP,
        secret.to_vec(),
        Some(ISSUER.into()),
        account.into(),
    )
    .map_err(|e| format!("cannot use this TOTP secret: {e}"))
}

/// The secret in base32 (what a person types into an app), the
/// `otpauth://` URI and its QR code as SVG.
pub fn enrolment(secret: &[u8], account: &str) -> Result<(String, String, String), String> {
    let t = totp(secret, account)?;
    let uri = t.get_url();
    let qr = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| format!("cannot draw the QR code: {e}"))?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .build();
    Ok((t.get_secret_base32(), uri, qr))
}

/// The raw secret of its base32 text (what enrolment shows), for tests
/// that play the authenticator app.
pub fn secret_from_base32(b32: &str) -> Option<Vec<u8>> {
    totp_rs::Secret::Encoded(b32.to_string()).to_bytes().ok()
}

/// The code for the moment `unix_secs` (tests compute what a phone shows).
pub fn code_at(secret: &[u8], unix_secs: u64) -> String {
    totp(secret, "x")
        .map(|t| t.generate(unix_secs))
        .unwrap_or_default()
}

/// The time step `code` belongs to, if it is the code of the step before,
/// at or after `unix_secs`.
pub fn matching_step(secret: &[u8], code: &str, unix_secs: u64) -> Option<i64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now_step = unix_secs / STEP;
    [now_step.saturating_sub(1), now_step, now_step + 1]
        .into_iter()
        .find(|&step| {
            let want = code_at(secret, step * STEP);
            // Compared in constant time: how much of a guess matched must
            // not show in how long the answer takes.
            subtle::ConstantTimeEq::ct_eq(want.as_bytes(), code.as_bytes()).into()
        })
        .map(|s| s as i64)
}

/// New recovery codes (shown once) and the hashes to store.
pub fn new_recovery_codes() -> (Vec<String>, Vec<[u8; 32]>) {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut raw = [0u8; 10];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            let code = format!("{}-{}", &text[..7], &text[7..]);
            let hash = recovery_hash(&code);
            (code, hash)
        })
        .unzip()
}

fn recovery_hash(code: &str) -> [u8; 32] {
    crate::auth::hash_secret(&format!("recovery:{}", code.trim()))
}

/// Checks a login's second factor for `user_id` at `unix_secs`: a TOTP
/// code not used before, or an unused recovery code (used up here). Runs
/// in the login's transaction.
pub fn check_second_factor(
    tx: &mut Tx,
    user_id: i64,
    code: &str,
    unix_secs: i64,
) -> store::Result<bool> {
    let Some(secret) = store::totp_state(tx, user_id)?.secret else {
        return Ok(false);
    };
    if let Some(step) = matching_step(&secret, code, unix_secs.max(0) as u64) {
        return store::use_totp_step(tx, user_id, step);
    }
    store::use_recovery_code(tx, user_id, &recovery_hash(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1, its 20-byte secret: the six low digits
    /// of the eight-digit values listed there.
    #[test]
    fn codes_match_the_rfc_test_vectors() {
        let secret = b"12345678901234567890";
        for (t, want) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(code_at(secret, t), want, "t={t}");
        }
    }

    #[test]
    fn a_code_is_good_one_step_either_side_and_no_further() {
        let secret = new_secret();
        let t = 1_800_000_000;
        let code = code_at(&secret, t);
        assert_eq!(matching_step(&secret, &code, t), Some((t / STEP) as i64));
        assert!(matching_step(&secret, &code, t + STEP).is_some());
        assert!(matching_step(&secret, &code, t - STEP).is_some());
        assert!(matching_step(&secret, &code, t + 3 * STEP).is_none());
        assert!(matching_step(&secret, "12345", t).is_none());
        assert!(matching_step(&secret, "abcdef", t).is_none());
    }

    #[test]
    fn enrolment_gives_a_uri_and_a_qr_code() {
        let secret = new_secret();
        let (b32, uri, svg) = enrolment(&secret, "alice").unwrap();
        assert!(uri.starts_with("otpauth://totp/hushgate:alice?"), "{uri}");
        assert!(uri.contains(&format!("secret={b32}")), "{uri}");
        assert!(svg.contains("<svg"), "{svg}");
    }

    #[test]
    fn recovery_codes_are_distinct_and_hashed() {
        let (codes, hashes) = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let mut c = codes.clone();
        c.sort();
        c.dedup();
        assert_eq!(c.len(), RECOVERY_CODES);
        assert_eq!(hashes[0], recovery_hash(&codes[0]));
    }
}
