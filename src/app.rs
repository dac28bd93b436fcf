//! Composition: opens the store, starts the actors and the HTTP API, and runs
//! until the shutdown future resolves. Everything it needs is passed in
//! (settings, bound listeners, the metrics handle, the shutdown signal), so
//! tests and `main` drive it the same way.

use std::{future::Future, net::TcpListener, sync::Arc};

use dynabase_actors::{supervisor::PlatformActors, Store};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::{
    adapters::{
        redis::{RedisAdapterError, RedisProbe},
        store::{EmbeddedStore, EmbeddedStoreError, MongoStore, MongoStoreError},
    },
    http::{self, HttpState},
    settings::{Settings, StoreSettings},
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("embedded store: {0}")]
    Embedded(#[from] EmbeddedStoreError),
    #[error("mongodb store: {0}")]
    Mongo(#[from] MongoStoreError),
    #[error(transparent)]
    Redis(#[from] RedisAdapterError),
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
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

/// Runs the platform until `shutdown` resolves, then stops accepting and
/// lets in-flight requests finish within `settings.shutdown_deadline`.
/// Must be called inside an actix `System`.
pub async fn run(
    settings: Settings,
    http_listener: TcpListener,
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
    let catalog = Arc::new(settings.catalog.clone());
    let actors = PlatformActors::start(store.clone(), catalog);
    let state = HttpState {
        store,
        store_kind,
        actors,
        admin_token: settings.http.admin_token.clone(),
        metrics,
        redis,
    };
    let server = http::serve(http_listener, state, settings.shutdown_deadline)?;
    let handle = server.handle();
    let server_task = actix::spawn(server);
    tracing::info!(store = store_kind, "dynabase is serving");

    shutdown.await;
    tracing::info!(deadline = ?settings.shutdown_deadline, "shutting down");
    // Graceful stop waits for in-flight requests up to the server's
    // shutdown timeout (the deadline); the outer timeout is a backstop.
    let stopped = tokio::time::timeout(settings.shutdown_deadline, handle.stop(true)).await;
    if stopped.is_err() {
        tracing::warn!("shutdown deadline passed; stopping anyway");
    }
    server_task.abort();
    Ok(())
}
