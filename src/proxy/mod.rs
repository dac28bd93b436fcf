//! The PostgreSQL connection proxy.
//!
//! `codec/` frames the wire protocol and knows nothing of tenants;
//! `handshake`, `upstream` and `relay` move bytes; `session` composes them
//! with the policy of the tenant actors; `sessions` and `cancel` keep the
//! live state the admin API and CancelRequests need.

pub mod busy_poll;
pub mod cancel;
pub mod client_error;
pub mod codec;
pub mod cycle;
pub mod cycle_metrics;
pub mod cycle_sink;
pub mod event_loop;
pub mod handshake;
pub mod identify;
pub mod relay;
pub mod relay_state;
pub mod session;
pub mod session_relay;
pub mod sessions;
pub mod stream;
pub mod threads;
pub mod tls;
pub mod upstream;

use std::{future::Future, sync::Arc, time::Duration};

use dynabase_actors::{shared_limits::SharedLimits, tenant::TenantRegistry};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use self::{
    cancel::CancelKeys, cycle_sink::CycleSink, sessions::SessionTable, threads::SessionThreads,
};

/// Proxy timings and TLS policy, from configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub handshake_timeout: Duration,
    pub auth_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a query cycle may wait for rate-limit quota before refusal.
    pub max_queue_delay: Duration,
    pub require_tls: bool,
    /// `<org>.<sni_domain>` identifies the org from the TLS host name.
    pub sni_domain: Option<String>,
}

/// Everything a session needs, shared by all sessions.
pub struct ProxyContext {
    pub config: ProxyConfig,
    pub tls: Option<TlsAcceptor>,
    pub tenants: TenantRegistry,
    pub sessions: Arc<SessionTable>,
    pub cancel_keys: Arc<CancelKeys>,
    pub cycles: CycleSink,
    /// Org-wide limits across replicas (Redis), when configured.
    pub shared_limits: Option<Arc<dyn SharedLimits>>,
    pub replica_id: String,
    /// Wakes suspended databases (scale-to-zero).
    pub scale: dynabase_actors::scale_to_zero::ScaleToZero,
}

/// Accepts connections until `shutdown` resolves and runs each session on
/// one of `threads`. Sessions already running carry on; the caller ends them
/// (see `SessionTable::terminate_all`).
pub async fn run(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    threads: Arc<SessionThreads>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                // Handed over as a std socket: it must be registered with
                // the driver of the thread that will run the session.
                Ok((tcp, peer)) => match tcp.into_std() {
                    Ok(tcp) => {
                        let ctx = ctx.clone();
                        threads.spawn(move || async move {
                            match TcpStream::from_std(tcp) {
                                Ok(tcp) => session::serve(ctx, tcp, peer).await,
                                Err(e) => tracing::warn!(error = %e, %peer, "cannot register client socket"),
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, %peer, "cannot hand over client socket"),
                },
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    tracing::info!(sessions = ctx.sessions.len(), "proxy stopped accepting");
}
