//! Passwords, bearer secrets and the login rate limiter.
//!
//! Every secret the control plane hands out (login tokens, gateway
//! credentials, enrollment tokens, the admin token) is 32 random bytes,
//! shown once, and stored only as its SHA-256: a stolen database file does
//! not let anyone act as a user or a gateway.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Kinds of secrets, as a visible prefix so a leaked one is recognisable
/// (and so a user token pasted where a gateway credential goes fails
/// clearly).
#[derive(Debug, Clone, Copy)]
pub enum SecretKind {
    UserToken,
    GatewayCredential,
    Enrollment,
    Admin,
}

impl SecretKind {
    fn prefix(self) -> &'static str {
        match self {
            SecretKind::UserToken => "hgu_",
            SecretKind::GatewayCredential => "hgg_",
            SecretKind::Enrollment => "hge_",
            SecretKind::Admin => "hga_",
        }
    }
}

/// A fresh secret and the hash to store for it.
pub fn new_secret(kind: SecretKind) -> (String, [u8; 32]) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let text = format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(raw));
    let hash = hash_secret(&text);
    (text, hash)
}

pub fn hash_secret(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

pub fn random_id(prefix: &str) -> String {
    let mut raw = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

pub fn random_key() -> [u8; 32] {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    raw
}

/// Argon2id with the crate's defaults (19 MiB, 2 passes): OWASP's
/// recommended floor, ~20-40 ms here.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// Checks a password against a stored hash. Runs the full argon2 work
/// even for a malformed hash, so every failure costs the same time.
pub fn verify_password(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Token buckets for login attempts, per source address and per user
/// name, so neither a single host nor a botnet aimed at one account can
/// guess passwords quickly.
#[derive(Debug)]
pub struct LoginLimiter {
    /// Attempts allowed in a burst.
    burst: f64,
    /// Attempts regained per second.
    refill_per_sec: f64,
    buckets: Mutex<HashMap<LimitKey, (f64, Instant)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LimitKey {
    Source(IpAddr),
    User(String),
}

impl LoginLimiter {
    /// `per_minute` attempts per minute, with bursts of the same size.
    pub fn new(per_minute: u32) -> Self {
        LoginLimiter {
            burst: f64::from(per_minute.max(1)),
            refill_per_sec: f64::from(per_minute.max(1)) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for this source and user, or says how long to
    /// wait. Both buckets must have room; neither is charged otherwise.
    pub fn check(&self, source: IpAddr, username: &str, now: Instant) -> Result<(), Duration> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > 100_000 {
            // Forget full buckets so a spray of sources cannot grow this map
            // without bound.
            let burst = self.burst;
            let rate = self.refill_per_sec;
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        // One IPv6 host usually holds a whole /64: count it as one source.
        let source = match source {
            IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
            v4 => v4,
        };
        let keys = [
            LimitKey::Source(source),
            LimitKey::User(username.to_lowercase()),
        ];
        let mut levels = [0.0; 2];
        for (i, k) in keys.iter().enumerate() {
            let (tokens, at) = b.get(k).copied().unwrap_or((self.burst, now));
            let level = (tokens + now.duration_since(at).as_secs_f64() * self.refill_per_sec)
                .min(self.burst);
            levels[i] = level;
        }
        let lowest = levels.iter().cloned().fold(f64::INFINITY, f64::min);
        if lowest < 1.0 {
            let wait = (1.0 - lowest) / self.refill_per_sec;
            return Err(Duration::from_secs_f64(wait.max(1.0)));
        }
        for (k, level) in keys.into_iter().zip(levels) {
            b.insert(k, (level - 1.0, now));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn limiter_per_source_and_user() {
        let l = LoginLimiter::new(3);
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(a, "alice", t).is_ok());
        }
        // Same source, other user: the source bucket is empty.
        assert!(l.check(a, "bob", t).is_err());
        // Other source, same user: the user bucket is empty.
        assert!(l.check(b, "ALICE", t).is_err());
        assert!(l.check(b, "carol", t).is_ok());
        // A minute later the buckets are full again.
        assert!(l.check(a, "alice", t + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn secrets_are_distinct_and_prefixed() {
        let (a, ha) = new_secret(SecretKind::UserToken);
        let (b, _) = new_secret(SecretKind::UserToken);
        assert!(a.starts_with("hgu_"));
        assert_ne!(a, b);
        assert_eq!(hash_secret(&a), ha);
    }
}
