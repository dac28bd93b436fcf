//! The opening of a client connection: SSL/GSS negotiation, cancel
//! requests, and the StartupMessage. Protocol only; no tenant policy.

use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{
    client_error::ClientError,
    codec::{
        startup::{read_startup, StartupMessage, StartupPacket},
        CodecError,
    },
    stream::ClientStream,
};

/// What the client opened the connection for.
pub enum Opening {
    /// The client's connection is kept so that it is closed only once the
    /// cancel has reached PostgreSQL (clients take our EOF as "delivered").
    Cancel {
        stream: ClientStream,
        process_id: i32,
        secret_key: i32,
    },
    Session {
        stream: ClientStream,
        startup: StartupMessage,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// A refusal to send to the client before closing.
    #[error("{1}")]
    Refuse(ClientStream, ClientError),
}

/// Reads opening packets until a StartupMessage or CancelRequest.
pub async fn open(tcp: TcpStream, tls: Option<&TlsAcceptor>) -> Result<Opening, HandshakeError> {
    let mut stream = ClientStream::Plain(tcp);
    loop {
        match read_startup(&mut stream).await? {
            StartupPacket::SslRequest => {
                let ClientStream::Plain(mut tcp) = stream else {
                    let violation = ClientError::ProtocolViolation("SSLRequest inside TLS".into());
                    return Err(HandshakeError::Refuse(stream, violation));
                };
                match tls {
                    Some(acceptor) => {
                        tcp.write_all(b"S").await.map_err(CodecError::Io)?;
                        let tls = acceptor.accept(tcp).await.map_err(HandshakeError::Tls)?;
                        stream = ClientStream::Tls(Box::new(tls));
                    }
                    None => {
                        tcp.write_all(b"N").await.map_err(CodecError::Io)?;
                        stream = ClientStream::Plain(tcp);
                    }
                }
            }
            StartupPacket::GssEncRequest => stream.write_all(b"N").await.map_err(CodecError::Io)?,
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                return Ok(Opening::Cancel {
                    stream,
                    process_id,
                    secret_key,
                })
            }
            StartupPacket::UnsupportedVersion { major, minor } => {
                return Err(HandshakeError::Refuse(
                    stream,
                    ClientError::UnsupportedProtocol { major, minor },
                ))
            }
            StartupPacket::Startup(startup) => return Ok(Opening::Session { stream, startup }),
        }
    }
}
