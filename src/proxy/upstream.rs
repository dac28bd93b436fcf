//! Connecting to the tenant's PostgreSQL and relaying authentication.
//!
//! The proxy stores no passwords: trust, cleartext, MD5 and SCRAM-SHA-256
//! exchanges pass through unchanged, and PostgreSQL decides. Only the
//! BackendKeyData is replaced by a key of the proxy's own.

use std::time::Duration;

use dynabase_actors::Upstream;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    cancel::{CancelError, CancelTarget, IssuedKey},
    client_error::ClientError,
    codec::{backend, frontend, read_message, write_message, CodecError},
    stream::ClientStream,
};

/// Handshake messages are small; anything bigger is not PostgreSQL.
const HANDSHAKE_MESSAGE_LIMIT: usize = 64 * 1024;

const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// An authenticated upstream session, ready for queries.
pub struct Authenticated {
    pub server: TcpStream,
    pub key: Option<IssuedKey>,
    /// Transaction status of the first ReadyForQuery.
    pub status: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Tell the client this, then close.
    #[error("{0}")]
    Client(ClientError),
    /// PostgreSQL refused; its ErrorResponse has been relayed to the client.
    #[error("upstream refused the session")]
    Relayed,
    #[error("client: {0}")]
    ClientIo(CodecError),
    #[error(transparent)]
    Cancel(#[from] CancelError),
}

/// Connects to `upstream`, sends `params` as the StartupMessage and relays
/// the authentication exchange with `client` until ReadyForQuery.
pub async fn authenticate(
    client: &mut ClientStream,
    upstream: &Upstream,
    params: &[(String, String)],
    user_rewritten: bool,
    connect_timeout: Duration,
    issue_key: impl FnOnce(CancelTarget) -> Result<IssuedKey, CancelError>,
    unavailable: impl Fn() -> ClientError,
) -> Result<Authenticated, AuthError> {
    let addr = (upstream.host.as_str(), upstream.port);
    let mut server = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(upstream = %upstream, error = %e, "upstream connect failed");
            return Err(AuthError::Client(unavailable()));
        }
        Err(_) => {
            tracing::warn!(upstream = %upstream, "upstream connect timed out");
            return Err(AuthError::Client(unavailable()));
        }
    };
    let _ = server.set_nodelay(true);
    let mut out = Vec::with_capacity(256);
    frontend::startup_message(
        &mut out,
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    server
        .write_all(&out)
        .await
        .map_err(|_| AuthError::Client(unavailable()))?;

    let mut to_client = Vec::with_capacity(512);
    let mut issue_key = Some(issue_key);
    let mut key = None;
    loop {
        let (tag, body) = match read_message(&mut server, HANDSHAKE_MESSAGE_LIMIT).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(upstream = %upstream, error = %e, "upstream failed during startup");
                return Err(AuthError::Client(unavailable()));
            }
        };
        match tag {
            b'R' => {
                let code = body
                    .get(..4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(-1);
                if !(code == AUTH_MD5 && user_rewritten) {
                    write_message(&mut to_client, tag, &body);
                }
                match code {
                    AUTH_OK | AUTH_SASL_FINAL => {}
                    AUTH_MD5 if user_rewritten => {
                        return Err(AuthError::Client(ClientError::Md5WithOrgInUserName))
                    }
                    AUTH_CLEARTEXT | AUTH_MD5 | AUTH_SASL | AUTH_SASL_CONTINUE => {
                        send(client, &mut to_client).await?;
                        let (ctag, cbody) = read_message(client, HANDSHAKE_MESSAGE_LIMIT)
                            .await
                            .map_err(AuthError::ClientIo)?;
                        if ctag != b'p' {
                            return Err(AuthError::Client(ClientError::ProtocolViolation(
                                "expected a password message".into(),
                            )));
                        }
                        let mut fwd = Vec::with_capacity(cbody.len() + 5);
                        write_message(&mut fwd, ctag, &cbody);
                        server
                            .write_all(&fwd)
                            .await
                            .map_err(|_| AuthError::Client(unavailable()))?;
                    }
                    _ => return Err(AuthError::Client(ClientError::UnsupportedAuth)),
                }
            }
            b'K' if body.len() == 8 => {
                let target = CancelTarget {
                    upstream: upstream.clone(),
                    process_id: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    secret_key: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                };
                if let Some(issue) = issue_key.take() {
                    let issued = issue(target)?;
                    backend::backend_key_data(&mut to_client, issued.process_id, issued.secret_key);
                    key = Some(issued);
                }
            }
            b'E' => {
                write_message(&mut to_client, tag, &body);
                send(client, &mut to_client).await?;
                return Err(AuthError::Relayed);
            }
            b'Z' => {
                write_message(&mut to_client, tag, &body);
                send(client, &mut to_client).await?;
                return Ok(Authenticated {
                    server,
                    key,
                    status: body.first().copied().unwrap_or(b'I'),
                });
            }
            _ => write_message(&mut to_client, tag, &body),
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, buf: &mut Vec<u8>) -> Result<(), AuthError> {
    w.write_all(buf)
        .await
        .map_err(|e| AuthError::ClientIo(e.into()))?;
    w.flush().await.map_err(|e| AuthError::ClientIo(e.into()))?;
    buf.clear();
    Ok(())
}
