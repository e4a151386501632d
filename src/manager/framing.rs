//! The framing of Wazuh's local stream sockets (`OS_SendSecureTCP` / `OS_RecvSecureTCP`): a 4-byte
//! little-endian length, then that many bytes. Used by wazuh-db's socket and remoted's request
//! socket.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest message either socket carries (Wazuh's `OS_MAXSTR`).
pub const MAX_MESSAGE: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a frame of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
}

/// Reads one message; the length is checked before anything is allocated.
pub async fn read_frame<R: AsyncReadExt + Unpin>(reader: &mut R, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; 4];
    reader.read_exact(&mut header).await?;
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(body)
}

/// Writes one message.
pub async fn write_frame<W: AsyncWriteExt + Unpin>(writer: &mut W, body: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    writer.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused_before_allocation() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"global get-all-agents last_id 0").await.unwrap();
        assert_eq!(&wire[..4], &31u32.to_le_bytes());
        let mut reader = &wire[..];
        assert_eq!(read_frame(&mut reader, MAX_MESSAGE).await.unwrap(), b"global get-all-agents last_id 0");
        let huge = u32::MAX.to_le_bytes();
        let mut reader = &huge[..];
        assert!(matches!(read_frame(&mut reader, MAX_MESSAGE).await, Err(FrameError::TooLarge(_))));
        let cut = [5u8, 0, 0, 0, b'a'];
        let mut reader = &cut[..];
        assert!(matches!(read_frame(&mut reader, MAX_MESSAGE).await, Err(FrameError::Io(_))));
    }
}
