//! Cancel keys: each client gets a BackendKeyData of the proxy's own; a
//! CancelRequest is forwarded only to the upstream session that key names.
//! Unknown keys (another tenant's guess included) do nothing.

use std::{sync::Arc, time::Duration};

use dashmap::{mapref::entry::Entry, DashMap};
use dynabase_actors::Upstream;
use tokio::{io::AsyncWriteExt, net::TcpStream};

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

    /// Forwards a client's CancelRequest if its key is one we issued.
    /// Returns whether a cancel was sent upstream.
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
            stream.shutdown().await
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
