//! The cluster key: how it is generated, validated, and stretched into the Noise pre-shared key.
//!
//! Any key, including a Wazuh-style 32-character one, goes through Argon2id before use; the raw
//! text is never a cipher key. The key's text appears in no `Debug` output and no error message.

use argon2::{Algorithm, Argon2, Params, Version};
use base64ct::{Base64UrlUnpadded, Encoding};
use std::fmt;
use zeroize::Zeroize;

/// Shortest accepted key: the length of a Wazuh cluster key.
pub const MIN_KEY_LEN: usize = 32;
/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 1024;
/// Prefix of keys made by [`generate`]; purely informative.
pub const GENERATED_PREFIX: &str = "wmn1.";

/// Domain-separating salt: the same key text gives different PSKs in other programs.
const KDF_SALT: &[u8] = b"wazuh-multi-node/cluster-psk/v1";
/// Argon2id cost: 19 MiB, 2 passes, 1 lane (OWASP's recommended minimum). Paid once per node
/// start, not per connection.
const KDF_MEMORY_KIB: u32 = 19 * 1024;
const KDF_PASSES: u32 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the key is {0} characters long; at least {MIN_KEY_LEN} are required (generate one with `wazuh-cluster keygen`)")]
    TooShort(usize),
    #[error("the key is longer than {MAX_KEY_LEN} characters")]
    TooLong,
    #[error("the key may only hold printable ASCII characters without spaces (character {0} is not)")]
    BadCharacter(usize),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// The shared cluster key, as configured. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(String);

impl Drop for ClusterKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ClusterKey {
    /// Validates `text` (surrounding whitespace, such as a key file's newline, is ignored).
    pub fn new(text: &str) -> Result<Self, KeyError> {
        let key = text.trim();
        let chars = key.chars().count();
        if let Some(pos) = key.chars().position(|c| !c.is_ascii_graphic()) {
            return Err(KeyError::BadCharacter(pos + 1));
        }
        if chars < MIN_KEY_LEN {
            return Err(KeyError::TooShort(chars));
        }
        if chars > MAX_KEY_LEN {
            return Err(KeyError::TooLong);
        }
        Ok(Self(key.to_string()))
    }

    /// Stretches the key with Argon2id into the 32-byte Noise pre-shared key.
    pub fn derive_psk(&self) -> Result<Psk, KeyError> {
        let params = Params::new(KDF_MEMORY_KIB, KDF_PASSES, 1, Some(32)).map_err(|e| KeyError::Kdf(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut out = [0u8; 32];
        argon.hash_password_into(self.0.as_bytes(), KDF_SALT, &mut out).map_err(|e| KeyError::Kdf(e.to_string()))?;
        Ok(Psk(out))
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// A fresh random key: 256 bits from the OS, base64url, with a version prefix.
pub fn generate() -> Result<String, KeyError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| KeyError::Random(e.to_string()))?;
    let key = format!("{GENERATED_PREFIX}{}", Base64UrlUnpadded::encode_string(&raw));
    raw.zeroize();
    Ok(key)
}

/// The derived pre-shared key. Never printed.
#[derive(Clone)]
pub struct Psk([u8; 32]);

impl Drop for Psk {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Psk {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// For tests and benchmarks that need a PSK without paying for Argon2.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_long_printable_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(GENERATED_PREFIX));
        assert_eq!(a.len(), GENERATED_PREFIX.len() + 43, "32 bytes in unpadded base64");
        assert!(ClusterKey::new(&a).is_ok());
    }

    #[test]
    fn wazuh_style_key_is_accepted_and_stretched() {
        let wazuh = "c98b62a9b6169ac5f67dae55ae4a9088";
        let key = ClusterKey::new(wazuh).unwrap();
        let psk = key.derive_psk().unwrap();
        assert_ne!(&psk.as_bytes()[..], wazuh.as_bytes(), "never used raw");
        assert_eq!(psk.as_bytes(), key.derive_psk().unwrap().as_bytes(), "deterministic");
        let other = ClusterKey::new("c98b62a9b6169ac5f67dae55ae4a9089").unwrap();
        assert_ne!(psk.as_bytes(), other.derive_psk().unwrap().as_bytes());
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let short = "tooshort-secret";
        let err = ClusterKey::new(short).unwrap_err();
        assert_eq!(err, KeyError::TooShort(short.len()));
        assert!(!err.to_string().contains(short));
        let spaced = "0123456789abcdef 0123456789abcdef";
        let err = ClusterKey::new(spaced).unwrap_err();
        assert_eq!(err, KeyError::BadCharacter(17));
        assert!(!err.to_string().contains("0123456789abcdef"));
        assert_eq!(ClusterKey::new(&"k".repeat(MAX_KEY_LEN + 1)), Err(KeyError::TooLong));
        // A key file's trailing newline is not part of the key.
        let k = "0123456789abcdef0123456789abcdef";
        assert_eq!(ClusterKey::new(&format!("{k}\n")).unwrap(), ClusterKey::new(k).unwrap());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let secret = "0123456789abcdef0123456789abcdef";
        let key = ClusterKey::new(secret).unwrap();
        assert!(!format!("{key:?}").contains("0123"));
        assert!(!format!("{:?}", Psk::from_bytes([7; 32])).contains('7'));
    }
}
