//! PostgreSQL wire protocol v3 framing: what the proxy needs to read and
//! write, and nothing about tenants or policy.
//!
//! One file per concern: the startup packet, the backend messages the proxy
//! writes itself, the frontend messages it writes upstream, and the streaming
//! scanner that finds message boundaries in relayed bytes.

pub mod backend;
pub mod frontend;
pub mod scanner;
pub mod startup;

/// Why bytes from a peer could not be framed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("startup packet length {0} is out of range")]
    BadStartupLength(u32),
    #[error("startup packet is malformed: {0}")]
    MalformedStartup(&'static str),
    #[error("message length {0} is invalid")]
    BadMessageLength(u32),
    #[error("message of {0} bytes exceeds the limit during the handshake")]
    MessageTooLarge(usize),
    #[error("peer closed the connection")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads one whole tagged message (tag, body), refusing bodies over `limit`.
/// Used during the handshake only; the relay never buffers whole messages.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<(u8, Vec<u8>), CodecError> {
    let mut header = [0u8; 5];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(CodecError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(CodecError::BadMessageLength(len));
    }
    let body_len = len as usize - 4;
    if body_len > limit {
        return Err(CodecError::MessageTooLarge(body_len));
    }
    let mut body = vec![0u8; body_len];
    r.read_exact(&mut body).await?;
    Ok((header[0], body))
}

/// Appends a whole message (tag, body) to `out`.
pub fn write_message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(
        &u32::try_from(body.len() + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(body);
}
