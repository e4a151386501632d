//! How Raft's values are encoded: log entries, the log's state and RPC bodies in MessagePack
//! (structs as maps, so that a field added later is skipped by an older reader, as on the cluster
//! channel).
//!
//! Builds before protocol 2.3 wrote them in JSON. Reading accepts both (a JSON value is an object
//! or a string and starts with `{` or `"`, which no MessagePack encoding of these values does: a
//! map starts with 0x80-0x8f, 0xde or 0xdf, a string with 0xa0-0xbf or 0xd9-0xdb), so a log
//! written by the previous build is read and rewritten at start ([`super::log_store`]), and a
//! peer of the previous build is sent JSON and answered in what it sent.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// How a value is (or is to be) encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    MessagePack,
    /// What builds before protocol 2.3 wrote and read.
    Json,
}

impl Encoding {
    /// What to send to a peer that speaks `version`.
    pub(crate) fn for_peer(version: wazuh_cluster_protocol::ProtocolVersion) -> Self {
        if version >= wazuh_cluster_protocol::version::RAFT_MESSAGEPACK {
            Encoding::MessagePack
        } else {
            Encoding::Json
        }
    }

    /// What `bytes` were written in.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        match bytes.first() {
            Some(b'{' | b'"' | b'[') => Encoding::Json,
            _ => Encoding::MessagePack,
        }
    }
}

/// A value that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("MessagePack: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("JSON (written by an earlier build): {0}")]
    Json(#[from] serde_json::Error),
}

pub(crate) fn encode<T: Serialize>(value: &T, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    Ok(match encoding {
        Encoding::MessagePack => rmp_serde::to_vec_named(value)?,
        Encoding::Json => serde_json::to_vec(value)?,
    })
}

/// `bytes` decoded as what they were written in; that encoding beside the value.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, Encoding), CodecError> {
    let encoding = Encoding::of(bytes);
    let value = match encoding {
        Encoding::MessagePack => rmp_serde::from_slice(bytes)?,
        Encoding::Json => serde_json::from_slice(bytes)?,
    };
    Ok((value, encoding))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        term: u64,
        name: String,
        members: std::collections::BTreeMap<u64, String>,
        payload: Option<Vec<u8>>,
    }

    #[test]
    fn messagepack_is_written_and_json_of_an_earlier_build_is_still_read() {
        let s = Sample {
            term: 7,
            name: "\"quoted\"".into(),
            members: [(1, "m1".into()), (3, "m3".into())].into(),
            payload: Some(vec![0x7b, 0x22]),
        };
        let packed = encode(&s, Encoding::MessagePack).unwrap();
        assert_eq!(Encoding::of(&packed), Encoding::MessagePack);
        assert!(packed.len() < serde_json::to_vec(&s).unwrap().len());
        assert_eq!(decode::<Sample>(&packed).unwrap(), (s, Encoding::MessagePack));
        let json = br#"{"term":7,"name":"x","members":{"1":"m1"},"payload":null}"#;
        let (old, how) = decode::<Sample>(json).unwrap();
        assert_eq!((old.term, old.members.len(), how), (7, 1, Encoding::Json));
        // A bare string (a JSON-encoded log id of an earlier build would be an object; strings too).
        assert_eq!(decode::<String>(b"\"a\"").unwrap(), ("a".to_string(), Encoding::Json));
        assert_eq!(decode::<String>(&encode(&"a", Encoding::MessagePack).unwrap()).unwrap().1, Encoding::MessagePack);
        assert!(decode::<Sample>(b"\x93garbage").is_err());
        // A peer of the previous protocol is sent JSON; 2.3 and later MessagePack.
        use wazuh_cluster_protocol::ProtocolVersion;
        assert_eq!(Encoding::for_peer(ProtocolVersion::new(2, 2)), Encoding::Json);
        assert_eq!(Encoding::for_peer(ProtocolVersion::new(2, 3)), Encoding::MessagePack);
    }
}
