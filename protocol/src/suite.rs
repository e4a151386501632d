//! The two cipher suites a cluster can be configured with.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One suite for the whole handshake and transport. Both ends must be configured alike; the suite
/// is announced in clear in the first handshake frame so a mismatch is reported as such, and bound
/// into the Noise prologue so it cannot be altered in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CipherSuite {
    /// Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s, then ChaCha20-Poly1305 frames (the default: fast
    /// everywhere, constant time without hardware support).
    #[default]
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
    /// Noise_NNpsk0_25519_AESGCM_SHA256, then AES-256-GCM frames (fastest where AES-NI exists).
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

impl CipherSuite {
    pub const ALL: [CipherSuite; 2] = [CipherSuite::ChaCha20Poly1305, CipherSuite::Aes256Gcm];

    /// The name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            CipherSuite::ChaCha20Poly1305 => "chacha20-poly1305",
            CipherSuite::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// The byte announcing the suite in the first handshake frame.
    pub fn wire_id(self) -> u8 {
        match self {
            CipherSuite::ChaCha20Poly1305 => 1,
            CipherSuite::Aes256Gcm => 2,
        }
    }

    pub fn from_wire_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.wire_id() == id)
    }

    pub(crate) fn noise_params(self) -> &'static str {
        match self {
            CipherSuite::ChaCha20Poly1305 => "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s",
            CipherSuite::Aes256Gcm => "Noise_NNpsk0_25519_AESGCM_SHA256",
        }
    }
}

impl fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown cipher {0:?}: expected \"chacha20-poly1305\" or \"aes-256-gcm\"")]
pub struct UnknownSuite(pub String);

impl FromStr for CipherSuite {
    type Err = UnknownSuite;

    fn from_str(s: &str) -> Result<Self, UnknownSuite> {
        Self::ALL
            .into_iter()
            .find(|suite| suite.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownSuite(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_wire_ids_round_trip() {
        for suite in CipherSuite::ALL {
            assert_eq!(suite.name().parse::<CipherSuite>().unwrap(), suite);
            assert_eq!(CipherSuite::from_wire_id(suite.wire_id()), Some(suite));
            assert!(suite.noise_params().parse::<snow::params::NoiseParams>().is_ok());
        }
        assert!("aes-128-cbc".parse::<CipherSuite>().is_err());
        assert_eq!(CipherSuite::from_wire_id(0), None);
        assert_eq!(CipherSuite::default(), CipherSuite::ChaCha20Poly1305);
    }
}
