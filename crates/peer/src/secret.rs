//! The shared cluster secret that peers prove knowledge of during the handshake.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Minimum secret length: 128 bits, so the HMAC proof cannot be brute-forced offline.
pub const MIN_SECRET_BYTES: usize = 16;

/// The cluster secret shared by every member. Its `Debug` never prints the bytes, so it is safe to
/// keep inside configs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

/// Why a configured secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("cluster secret is not valid hex: {0}")]
    NotHex(String),
    #[error("cluster secret is {got} bytes; at least {MIN_SECRET_BYTES} bytes ({} hex digits) are required", MIN_SECRET_BYTES * 2)]
    TooShort { got: usize },
}

impl ClusterSecret {
    /// Parses a secret written as hex (surrounding whitespace, e.g. a trailing newline from a
    /// secret file, is ignored).
    pub fn from_hex(s: &str) -> Result<Self, SecretError> {
        let bytes = hex::decode(s.trim()).map_err(|e| SecretError::NotHex(e.to_string()))?;
        Self::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, SecretError> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort { got: bytes.len() });
        }
        Ok(Self(bytes))
    }

    /// A fresh random 256-bit secret (for `quorumsql up` and tests).
    pub fn random() -> Self {
        let mut b = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        Self(b)
    }

    /// Hex form, for writing a generated secret to a file. Deliberately not `Display`.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// HMAC keyed with the secret. HMAC accepts keys of any length, so the error never happens in
    /// practice; callers still turn it into a refused handshake rather than a panic.
    pub(crate) fn mac(&self) -> Result<Hmac<Sha256>, hmac::digest::InvalidLength> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
    }
}

impl FromStr for ClusterSecret {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_secret() {
        let s = ClusterSecret::from_hex("00112233445566778899aabbccddeeff").unwrap();
        let shown = format!("{s:?} {:?}", Some(&s));
        assert!(!shown.contains("0011"), "{shown}");
        assert!(!shown.contains("aabb"), "{shown}");
    }

    #[test]
    fn hex_parsing_rejects_short_and_non_hex() {
        assert_eq!(
            ClusterSecret::from_hex("abcd"),
            Err(SecretError::TooShort { got: 2 })
        );
        assert!(matches!(
            ClusterSecret::from_hex("zz112233445566778899aabbccddeeff"),
            Err(SecretError::NotHex(_))
        ));
        let s: ClusterSecret = " 00112233445566778899aabbccddeeff\n".parse().unwrap();
        assert_eq!(s.to_hex(), "00112233445566778899aabbccddeeff");
    }
}
