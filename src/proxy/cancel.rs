//! Cancel keys: each client gets a BackendKeyData of the proxy's own; a
//! CancelRequest is forwarded only to the upstream session that key names.
//! Unknown keys (another tenant's guess included) do nothing.

use std::{sync::Arc, time::Duration};

use dashmap::{mapref::entry::Entry, DashMap};
use dynabase_actors::Upstream;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::codec::frontend;

/// Where a client's key points.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub upstream: Upstream,
    pub process_id: i32,
    pub secret_key: i32,
}

#[derive(Debug, Default)]
pub struct CancelKeys {
    keys: DashMap<(i32, i32), CancelTarget>,
}

/// Removes the key when the session ends.
#[derive(Debug)]
pub struct IssuedKey {
    keys: Arc<CancelKeys>,
    pub process_id: i32,
    pub secret_key: i32,
}

impl Drop for IssuedKey {
    fn drop(&mut self) {
        self.keys.keys.remove(&(self.process_id, self.secret_key));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no randomness available: {0}")]
    Random(getrandom::Error),
}

impl CancelKeys {
    /// Issues a fresh random key for `target`.
    pub fn issue(self: &Arc<Self>, target: CancelTarget) -> Result<IssuedKey, CancelError> {
        loop {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(CancelError::Random)?;
            // Positive process ids look like PostgreSQL's to clients.
            let pid = i32::from_be_bytes([bytes[0] & 0x7f, bytes[1], bytes[2], bytes[3]]);
            let secret = i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            if let Entry::Vacant(v) = self.keys.entry((pid, secret)) {
                v.insert(target);
                return Ok(IssuedKey {
                    keys: self.clone(),
                    process_id: pid,
                    secret_key: secret,
                });
            }
        }
    }

    /// Forwards a client's CancelRequest if its key is one we issued, and
    /// returns once PostgreSQL has closed the cancel connection: it closes
    /// it after signalling the backend, and drivers (libpq, asyncpg) send
    /// their next query only when their own cancel connection is closed. A
    /// proxy that closed earlier would let the signal land on that next
    /// query. Returns whether a cancel was sent upstream.
    pub async fn cancel(&self, process_id: i32, secret_key: i32) -> bool {
        let Some(target) = self.keys.get(&(process_id, secret_key)).map(|t| t.clone()) else {
            tracing::debug!("cancel request with an unknown key ignored");
            metrics::counter!("dynabase_proxy_cancel_requests_total", "outcome" => "unknown_key")
                .increment(1);
            return false;
        };
        let addr = (target.upstream.host.as_str(), target.upstream.port);
        let sent = async {
            let mut stream = TcpStream::connect(addr).await?;
            stream
                .write_all(&frontend::cancel_request(
                    target.process_id,
                    target.secret_key,
                ))
                .await?;
            stream.shutdown().await?;
            // PostgreSQL answers nothing; read to its EOF.
            let mut scratch = [0u8; 64];
            while stream.read(&mut scratch).await? > 0 {}
            Ok::<(), std::io::Error>(())
        };
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(5), sent).await,
            Ok(Ok(()))
        );
        metrics::counter!("dynabase_proxy_cancel_requests_total", "outcome" => if ok { "forwarded" } else { "upstream_error" })
            .increment(1);
        ok
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::{io::AsyncReadExt, net::TcpListener};

    use super::*;

    /// The forwarded cancel is reported done only after the upstream closed
    /// its end, as PostgreSQL does once it has signalled the backend.
    #[tokio::test]
    async fn a_forwarded_cancel_waits_for_the_upstream_to_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let signalled = Arc::new(AtomicBool::new(false));
        let server = {
            let signalled = signalled.clone();
            tokio::spawn(async move {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut packet = [0u8; 16];
                conn.read_exact(&mut packet).await.unwrap();
                // Stands for the postmaster's work before it closes.
                tokio::time::sleep(Duration::from_millis(200)).await;
                signalled.store(true, Ordering::SeqCst);
                packet
            })
        };
        let keys = Arc::new(CancelKeys::default());
        let key = keys
            .issue(CancelTarget {
                upstream: Upstream {
                    host: "127.0.0.1".into(),
                    port,
                },
                process_id: 4242,
                secret_key: 99,
            })
            .unwrap();
        assert!(keys.cancel(key.process_id, key.secret_key).await);
        assert!(
            signalled.load(Ordering::SeqCst),
            "returned before the upstream closed"
        );
        let packet = server.await.unwrap();
        assert_eq!(&packet[8..12], &4242i32.to_be_bytes());
        assert_eq!(&packet[12..16], &99i32.to_be_bytes());
    }

    #[tokio::test]
    async fn an_unknown_key_sends_nothing() {
        let keys = Arc::new(CancelKeys::default());
        assert!(!keys.cancel(1, 2).await);
    }
}
