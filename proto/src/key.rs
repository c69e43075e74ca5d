use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A 32-byte WireGuard key (public key or preshared key) in the standard
/// WireGuard text form: 44 characters of padded standard base64, exactly
/// what `wg genkey | wg pubkey` prints.
///
/// `Debug` prints only a short fingerprint so that a preshared key held in
/// this type cannot leak into logs through `{:?}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WgKey(pub [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a WireGuard key is 44 characters of standard base64; this one is not valid base64")]
    NotBase64,
    #[error("a WireGuard key is 32 bytes; this one decodes to {0} bytes")]
    WrongLength(usize),
}

impl WgKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 base64 characters: enough to tell keys apart in logs
    /// and status output, far too little to be of use to anyone else.
    pub fn fingerprint(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl From<[u8; 32]> for WgKey {
    fn from(b: [u8; 32]) -> Self {
        WgKey(b)
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for WgKey {
    // A 32-bit FNV-1a tag: enough to tell keys apart in debug output,
    // and unlike a prefix of the key it gives away nothing usable about a
    // preshared key that ends up in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = self.0.iter().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
        });
        write!(f, "WgKey(#{tag:08x})")
    }
}

impl FromStr for WgKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| KeyError::NotBase64)?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(WgKey(arr))
    }
}

impl Serialize for WgKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for WgKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_wireguard_text_form() {
        // A key as printed by `wg pubkey`.
        let text = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
        let key: WgKey = text.parse().unwrap();
        assert_eq!(key.to_string(), text);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<WgKey>(&json).unwrap(), key);
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!("not base64!".parse::<WgKey>(), Err(KeyError::NotBase64));
        assert_eq!("AAAA".parse::<WgKey>(), Err(KeyError::WrongLength(3)));
    }

    #[test]
    fn debug_hides_the_key() {
        let key = WgKey([7; 32]);
        let dbg = format!("{key:?}");
        assert!(!dbg.contains(&key.to_string()[..4]), "{dbg}");
        assert_ne!(dbg, format!("{:?}", WgKey([8; 32])));
    }
}
