//! Composition: opens the store, starts the actors and the HTTP API, and runs
//! until the shutdown future resolves. Everything it needs is passed in
//! (settings, bound listeners, the metrics handle, the shutdown signal), so
//! tests and `main` drive it the same way.

use std::{future::Future, net::TcpListener, sync::Arc, time::Duration};

use dynabase_actors::{
    billing::{provider::NoInvoiceItems, runner::BillingTick},
    calibration::source::{NoUsageSource, UsageSource},
    calibrator::CalibrationTick,
    lifecycle::Tick,
    scale_to_zero::ScaleToZero,
    shared_limits::SharedLimits,
    supervisor::{PlatformActors, PlatformDeps},
    tenant::enforcement::{Enforcement, EnforcementSwitch, ENFORCEMENT_SETTING},
    tenant::SharedPolicy,
    tier_cache::{NoTierCache, TierCache},
    ClockAnchor, Store, UnixMillis,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::oneshot;

use crate::{
    adapters::{
        compute::{
            railway::{RailwayCompute, RailwayComputeConfig, RailwayComputeError},
            Drivers,
        },
        outbound_webhook::{HttpNotificationSender, OutboundError},
        railway::{RailwayClientError, RailwayUsage},
        redis::{RedisAdapterError, RedisProbe},
        redis_limits::{RedisLimits, RedisLimitsConfig, RedisLimitsError},
        redis_tier_cache::{spawn_invalidation_listener, RedisTierCache},
        store::{EmbeddedStore, EmbeddedStoreError, MongoStore, MongoStoreError},
        stripe_billing::{StripeBillingError, StripeInvoiceItems},
        stripe_webhook::StripeWebhooks,
    },
    http::{self, HttpState, LifecycleHttp},
    proxy::{
        self,
        cancel::CancelKeys,
        cycle_sink,
        sessions::SessionTable,
        threads::{SessionThreads, ThreadsError},
        tls::TlsError,
        ProxyConfig, ProxyContext,
    },
    settings::{Settings, StoreSettings},
    usage_feed::{self, UsageFeed, UsageFeedError},
    usage_spill::Spill,
};

/// Bound sockets the platform serves on (bound by the caller, so tests and
/// `main` can use port 0 and learn the address first).
pub struct Listeners {
    pub http: TcpListener,
    pub proxy: TcpListener,
}

/// The shutdown flush gets at least this long, even when sessions used up
/// the shutdown deadline: unwritten usage is unbilled usage.
const MIN_FLUSH_TIME: Duration = Duration::from_secs(3);

/// How often histogram samples are folded (the exporter's own default).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("embedded store: {0}")]
    Embedded(#[from] EmbeddedStoreError),
    #[error("mongodb store: {0}")]
    Mongo(#[from] MongoStoreError),
    #[error(transparent)]
    Redis(#[from] RedisAdapterError),
    #[error("outbound notifications: {0}")]
    Outbound(#[from] OutboundError),
    #[error("Stripe API client: {0}")]
    StripeApi(#[from] StripeBillingError),
    #[error("Railway API client: {0}")]
    RailwayApi(#[from] RailwayClientError),
    #[error("railway compute driver: {0}")]
    RailwayCompute(#[from] RailwayComputeError),
    #[error(transparent)]
    RedisLimits(#[from] RedisLimitsError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("proxy TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("usage: {0}")]
    Usage(#[from] UsageFeedError),
    #[error(transparent)]
    Threads(#[from] ThreadsError),
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
    let anchor = ClockAnchor::now();
    let usage_config = usage_feed::usage_config(&settings, anchor)?;
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
            Some(shared)
        }
        None => None,
    };
    let redis_client = match &settings.redis {
        Some(r) => Some(redis::Client::open(r.url.expose()).map_err(RedisAdapterError::BadUrl)?),
        None => None,
    };
    let tier_cache: Arc<dyn TierCache> = match (&settings.redis, &redis_client) {
        (Some(r), Some(client)) => Arc::new(RedisTierCache::new(
            client,
            &r.key_prefix,
            settings.tier_cache.ttl,
        )?),
        _ => Arc::new(NoTierCache),
    };
    let notifications = &settings.notifications;
    let sender = HttpNotificationSender::new(
        (!notifications.signing_secret.is_empty()).then(|| notifications.signing_secret.clone()),
    )?;
    let enforcement = EnforcementSwitch::new(settings.limits.enforcement);
    let actors = PlatformActors::start_with(PlatformDeps {
        tier_cache,
        shared_limits: shared_limits.as_ref().map(|shared| SharedPolicy {
            shared: shared.clone(),
            central_below_qps: settings.limits.central_below_qps,
            sync_interval: settings.limits.sync_interval,
        }),
        policy: settings.lifecycle,
        prices: settings.stripe.prices.clone(),
        notification_sender: Arc::new(sender),
        notification_backoff: notifications.backoff,
        notification_max_attempts: notifications.max_attempts,
        billing: settings.billing.config.clone(),
        invoice_items: match StripeInvoiceItems::from_settings(&settings.stripe)? {
            Some(client) => Arc::new(client),
            None => {
                tracing::warn!("STRIPE_API_KEY is not set: overage charges are computed and recorded, not sent");
                Arc::new(NoInvoiceItems)
            }
        },
        calibration: settings.calibration.config.clone(),
        usage_source: usage_source(&settings)?,
        enforcement: enforcement.clone(),
        ..PlatformDeps::new(store.clone(), catalog.clone(), usage_config)
    });
    let invalidations = match (&settings.redis, redis_client) {
        (Some(r), Some(client)) => Some(spawn_invalidation_listener(
            client,
            &r.key_prefix,
            actors.tenants.clone(),
        )),
        _ => None,
    };
    let sessions = Arc::new(SessionTable::default());
    let scale = ScaleToZero::new(
        store.clone(),
        actors.tenants.clone(),
        Arc::new(Drivers::new(RailwayCompute::new(RailwayComputeConfig {
            token: settings.calibration.railway_token.clone(),
            endpoint: settings.calibration.railway_url.clone(),
            request_timeout: settings.calibration.railway_timeout,
            poll_interval: settings.scale_to_zero.railway_poll_interval,
            wake_timeout: settings.scale_to_zero.railway_wake_timeout,
        })?)),
        catalog.clone(),
        settings.scale_to_zero.config.clone(),
    )
    .with_shared_limits(shared_limits.clone());
    let background_tasks = [
        tokio::spawn(metrics_upkeep(metrics.clone())),
        tokio::spawn(tick_lifecycle(
            actors.clone(),
            settings.schedule.tick_interval,
        )),
        tokio::spawn(refresh_tiers(
            actors.clone(),
            settings.tier_cache.refresh_interval,
        )),
        tokio::spawn(tick_billing(actors.clone(), settings.billing.interval)),
        tokio::spawn(follow_enforcement(
            store.clone(),
            enforcement.clone(),
            settings.limits.enforcement,
        )),
        tokio::spawn(tick_calibration(
            actors.clone(),
            settings.calibration.interval,
        )),
        tokio::spawn(tick_scale_to_zero(
            scale.clone(),
            sessions.clone(),
            settings.scale_to_zero.tick_interval,
        )),
    ];

    let (cycles, cycle_source) = cycle_sink::channel(anchor);
    let cycles = if settings.usage.enabled {
        cycles
    } else {
        cycle_sink::CycleSink::disabled()
    };
    let usage_feed = UsageFeed::start(
        cycle_source,
        actors.usage.clone(),
        Spill::new(&settings.store.data_dir),
    );
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
        cycles,
        shared_limits,
        replica_id: settings.replica_id.clone(),
        scale: scale.clone(),
    });
    listeners.proxy.set_nonblocking(true)?;
    let proxy_listener = tokio::net::TcpListener::from_std(listeners.proxy)?;
    let (stop_accepting, stopped) = oneshot::channel::<()>();
    let threads = Arc::new(SessionThreads::start(
        settings.proxy.worker_threads,
        settings.proxy.pack_sessions,
        settings.proxy.busy_poll,
        settings.proxy.event_loop,
    )?);
    let proxy_task = tokio::spawn(proxy::run(
        proxy_listener,
        proxy_ctx,
        threads.clone(),
        async {
            let _ = stopped.await;
        },
    ));

    let state = HttpState {
        store,
        store_kind,
        actors,
        admin_token: settings.http.admin_token.clone(),
        metrics,
        redis,
        sessions: sessions.clone(),
        customer_limits: http::customer_limits::CustomerLimits::new(catalog.clone()),
        catalog,
        lifecycle: LifecycleHttp {
            stripe: (!settings.stripe.webhook_secret.is_empty())
                .then(|| StripeWebhooks::new(settings.stripe.webhook_secret.clone())),
            allow_clock_override: settings.schedule.allow_clock_override,
            invalidations,
        },
        billing: settings.billing.config.clone(),
        calibration: settings.calibration.config.clone(),
        scale,
        enforcement,
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
    // Every session has ended, so every cycle is in the feed: write it all.
    let now = std::time::Instant::now();
    let flush_deadline = now
        + deadline
            .into_std()
            .saturating_duration_since(now)
            .max(MIN_FLUSH_TIME);
    usage_feed.shutdown(flush_deadline).await;
    let _ = tokio::task::spawn_blocking(move || threads.stop()).await;
    server_task.abort();
    for task in background_tasks {
        task.abort();
    }
    Ok(())
}

/// Folds the recorder's histogram samples into their summaries on a timer.
/// A scrape does that too, but without one the samples pile up: a replica
/// nobody scraped grew by about 20 bytes per query cycle.
async fn metrics_upkeep(metrics: PrometheusHandle) {
    let mut ticks = tokio::time::interval(METRICS_UPKEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        metrics.run_upkeep();
    }
}

/// Runs the lifecycle scheduler on the wall clock: at start (pending work
/// from before a restart) and every `interval`.
async fn tick_lifecycle(actors: PlatformActors, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if actors
            .lifecycle
            .send(Tick {
                now: UnixMillis::now(),
            })
            .await
            .is_err()
        {
            tracing::error!("lifecycle scheduler unavailable");
        }
    }
}

/// Runs the billing job on the wall clock: the last closed period once it
/// has settled, and every charge due for a retry.
async fn tick_billing(actors: PlatformActors, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match actors
            .billing
            .send(BillingTick {
                now: UnixMillis::now(),
            })
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "billing run failed; retried next tick"),
            Err(_) => tracing::error!("billing job unavailable"),
        }
    }
}

/// Railway's API when a token is configured; otherwise calibration takes
/// manual bills only.
fn usage_source(settings: &Settings) -> Result<Arc<dyn UsageSource>, AppError> {
    let c = &settings.calibration;
    if c.railway_token.is_empty() {
        return Ok(Arc::new(NoUsageSource));
    }
    Ok(Arc::new(RailwayUsage::new(
        c.railway_token.clone(),
        &c.railway_project_id,
        c.railway_url.as_deref(),
        c.railway_timeout,
    )?))
}

/// How often each replica reads the enforcement switch from the store.
const ENFORCEMENT_POLL: Duration = Duration::from_secs(1);

/// Keeps this replica's enforcement switch on the store's setting (an
/// operator's `PUT /admin/modes` on any replica), else the configured one.
async fn follow_enforcement(
    store: Arc<dyn Store>,
    switch: EnforcementSwitch,
    default: Enforcement,
) {
    let mut ticks = tokio::time::interval(ENFORCEMENT_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.setting(ENFORCEMENT_SETTING).await {
            Ok(value) => {
                let mode = value
                    .as_deref()
                    .and_then(Enforcement::parse)
                    .unwrap_or(default);
                if mode != switch.get() {
                    tracing::info!(mode = mode.as_str(), "limits enforcement switched");
                    switch.set(mode);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "enforcement setting not read; keeping the current mode")
            }
        }
    }
}

/// Calibrates the last closed month once it has settled.
async fn tick_calibration(actors: PlatformActors, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let tick = CalibrationTick {
            now: UnixMillis::now(),
        };
        match actors.calibrator.send(tick).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "calibration failed; retried next tick"),
            Err(_) => tracing::error!("calibrator unavailable"),
        }
    }
}

/// Suspends idle organizations every `interval`.
async fn tick_scale_to_zero(scale: ScaleToZero, sessions: Arc<SessionTable>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = scale.tick(UnixMillis::now(), &sessions.orgs()).await {
            tracing::warn!(error = %e, "scale-to-zero tick failed");
        }
    }
}

/// Re-verifies the running tenants' tiers once they are `max_age` old.
async fn refresh_tiers(actors: PlatformActors, max_age: Duration) {
    // Checking at a quarter of the age bounds how much older than
    // `max_age` a record can get before it is re-verified.
    let mut ticks = tokio::time::interval((max_age / 4).max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        actors.tenants.refresh_due(UnixMillis::now(), max_age).await;
    }
}
