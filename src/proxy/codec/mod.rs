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
