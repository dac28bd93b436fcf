//! Composition: opens the store, starts the actors and the HTTP API, and runs
//! until the shutdown future resolves. Everything it needs is passed in
//! (settings, bound listeners, the metrics handle, the shutdown signal), so
//! tests and `main` drive it the same way.

use std::{future::Future, net::TcpListener, sync::Arc, time::Duration};

use actix::Addr;
use dynabase_actors::{
    domain::cycle::CycleEvent,
    shared_limits::SharedLimits,
    supervisor::PlatformActors,
    tenant::SharedPolicy,
    usage_accumulator::{CycleBatch, UsageAccumulator},
    Store,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, oneshot};

use crate::{
    adapters::{
        redis::{RedisAdapterError, RedisProbe},
        redis_limits::{RedisLimits, RedisLimitsConfig, RedisLimitsError},
        store::{EmbeddedStore, EmbeddedStoreError, MongoStore, MongoStoreError},
    },
    http::{self, HttpState},
    proxy::{
        self, cancel::CancelKeys, cycle::CycleSink, sessions::SessionTable, tls::TlsError,
        ProxyConfig, ProxyContext,
    },
    settings::{Settings, StoreSettings},
};

/// Bound sockets the platform serves on (bound by the caller, so tests and
/// `main` can use port 0 and learn the address first).
pub struct Listeners {
    pub http: TcpListener,
    pub proxy: TcpListener,
}

/// Cycle events buffered between the proxy and the actors: enough for
/// `CYCLE_DRAIN_INTERVAL` at over a million cycles per second.
const CYCLE_CHANNEL: usize = 131_072;
const CYCLE_DRAIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("embedded store: {0}")]
    Embedded(#[from] EmbeddedStoreError),
    #[error("mongodb store: {0}")]
    Mongo(#[from] MongoStoreError),
    #[error(transparent)]
    Redis(#[from] RedisAdapterError),
    #[error(transparent)]
    RedisLimits(#[from] RedisLimitsError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("proxy TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(
        "http.admin_token is empty: set DYNABASE_ADMIN_TOKEN, or run in development mode (`dynabase serve --dev`)"
    )]
    MissingAdminToken,
}

/// The configured store and its kind (`"embedded"` or `"mongodb"`).
pub async fn open_store(
    settings: &StoreSettings,
) -> Result<(Arc<dyn Store>, &'static str), AppError> {
    match &settings.mongodb {
        Some(m) => {
            let store = MongoStore::connect(m.url.expose(), &m.database).await?;
            Ok((Arc::new(store), "mongodb"))
        }
        None => {
            let store = EmbeddedStore::open(&settings.data_dir)?;
            Ok((Arc::new(store), "embedded"))
        }
    }
}

/// Runs the platform until `shutdown` resolves, then stops accepting,
/// lets sessions and requests finish within `settings.shutdown_deadline`,
/// and ends the sessions still open with 57P01. Must be called inside an
/// actix `System` running on a multi-threaded tokio runtime.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    if settings.http.admin_token.is_empty() {
        return Err(AppError::MissingAdminToken);
    }
    let (store, store_kind) = open_store(&settings.store).await?;
    let redis = match &settings.redis {
        Some(r) => Some(RedisProbe::new(r.url.expose())?),
        None => None,
    };
    let tls = match &settings.proxy.tls {
        Some(files) => Some(proxy::tls::acceptor(&files.cert, &files.key)?),
        None => None,
    };
    let catalog = Arc::new(settings.catalog.clone());
    let mut actors = PlatformActors::start(store.clone(), catalog);
    let shared_limits = match &settings.redis {
        Some(r) => {
            let limits = RedisLimits::new(
                r.url.expose(),
                RedisLimitsConfig {
                    replica_id: settings.replica_id.clone(),
                    key_prefix: r.key_prefix.clone(),
                    lease_ttl: settings.limits.lease_ttl,
                    demand_max_age: settings.limits.sync_interval * 3,
                    heartbeat: settings.limits.sync_interval,
                },
            )?;
            tokio::spawn(limits.clone().run_heartbeat());
            let shared: Arc<dyn SharedLimits> = limits;
            actors.tenants = actors.tenants.clone().with_shared_limits(SharedPolicy {
                shared: shared.clone(),
                central_below_qps: settings.limits.central_below_qps,
                sync_interval: settings.limits.sync_interval,
            });
            Some(shared)
        }
        None => None,
    };
    let sessions = Arc::new(SessionTable::default());

    let (cycle_tx, cycle_rx) = mpsc::channel(CYCLE_CHANNEL);
    tokio::spawn(forward_cycles(cycle_rx, actors.usage.clone()));
    let proxy_ctx = Arc::new(ProxyContext {
        config: ProxyConfig {
            handshake_timeout: settings.proxy.handshake_timeout,
            auth_timeout: settings.proxy.auth_timeout,
            connect_timeout: settings.proxy.connect_timeout,
            max_queue_delay: settings.limits.max_queue_delay,
            require_tls: settings.proxy.require_tls,
            sni_domain: settings.proxy.sni_domain.clone(),
        },
        tls,
        tenants: actors.tenants.clone(),
        sessions: sessions.clone(),
        cancel_keys: Arc::new(CancelKeys::default()),
        cycles: CycleSink::new(cycle_tx),
        shared_limits,
        replica_id: settings.replica_id.clone(),
    });
    listeners.proxy.set_nonblocking(true)?;
    let proxy_listener = tokio::net::TcpListener::from_std(listeners.proxy)?;
    let (stop_accepting, stopped) = oneshot::channel::<()>();
    let proxy_task = tokio::spawn(proxy::run(proxy_listener, proxy_ctx, async {
        let _ = stopped.await;
    }));

    let state = HttpState {
        store,
        store_kind,
        actors,
        admin_token: settings.http.admin_token.clone(),
        metrics,
        redis,
        sessions: sessions.clone(),
    };
    let server = http::serve(listeners.http, state, settings.shutdown_deadline)?;
    let handle = server.handle();
    let server_task = actix::spawn(server);
    tracing::info!(store = store_kind, "dynabase is serving");

    shutdown.await;
    let deadline = tokio::time::Instant::now() + settings.shutdown_deadline;
    tracing::info!(deadline = ?settings.shutdown_deadline, sessions = sessions.len(), "shutting down");
    let _ = stop_accepting.send(());
    let _ = proxy_task.await;
    // HTTP: graceful stop waits for in-flight requests up to the deadline.
    let http_stopped = tokio::time::timeout_at(deadline, handle.stop(true));
    let sessions_done = async {
        while !sessions.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (http_result, ()) = tokio::join!(http_stopped, sessions_done);
    if http_result.is_err() {
        tracing::warn!("HTTP requests still running at the deadline");
    }
    if !sessions.is_empty() {
        tracing::info!(
            sessions = sessions.len(),
            "deadline reached; terminating sessions"
        );
        sessions.terminate_all();
        let grace = tokio::time::Instant::now() + Duration::from_secs(1);
        while !sessions.is_empty() && tokio::time::Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    server_task.abort();
    Ok(())
}

/// Moves cycle events from the proxy's channel to the UsageAccumulator in
/// batches, so the actor handles one message per batch, not per query. It
/// drains on a timer rather than waiting on the channel: a waiting receiver
/// would be woken (a cross-thread wake-up) by every query.
async fn forward_cycles(mut rx: mpsc::Receiver<CycleEvent>, usage: Addr<UsageAccumulator>) {
    const BATCH: usize = 4096;
    let mut tick = tokio::time::interval(CYCLE_DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            let mut batch = Vec::with_capacity(BATCH);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        if !batch.is_empty() {
                            usage.do_send(CycleBatch(batch));
                        }
                        return;
                    }
                }
            }
            let full = batch.len() == BATCH;
            if !batch.is_empty() {
                usage.do_send(CycleBatch(batch));
            }
            if !full {
                break;
            }
        }
    }
}
