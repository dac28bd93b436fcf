//! Redis as the shared tier cache and the replicas' invalidation channel.
//!
//! - [`RedisTierCache`] implements the actors' [`TierCache`] port: one key
//!   per organization, `<prefix>:tier:<org>`, holding the organization record
//!   as JSON with a time-to-live (`tier_cache.ttl`, 5 minutes by default);
//!   [`TierCache::invalidate`] runs `DEL` and `PUBLISH <prefix>:tier-invalidations
//!   <org>` in one `MULTI`.
//! - [`spawn_invalidation_listener`] subscribes to that channel and has the
//!   tenant registry reload every organization announced; after each
//!   (re)subscription it reloads every running tenant, since announcements
//!   sent while it was disconnected are lost (Redis pub/sub keeps nothing).
//!
//! A Redis that is down must not slow admissions: commands time out after
//! [`COMMAND_TIMEOUT`], and after a failure the cache answers "unavailable"
//! at once for [`BACKOFF`] (callers then read the store) before trying
//! Redis again.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use dynabase_actors::{
    tenant::TenantRegistry,
    tier_cache::{TierCache, TierCacheError},
    OrgId, Organization,
};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::redis::RedisAdapterError;

/// How long one cache command may take before the store is asked instead.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// How long the cache is skipped after a failure.
pub const BACKOFF: Duration = Duration::from_secs(2);

/// The invalidation channel of a key prefix.
pub fn invalidation_channel(prefix: &str) -> String {
    format!("{prefix}:tier-invalidations")
}

/// The organization cache on Redis.
pub struct RedisTierCache {
    conn: ConnectionManager,
    prefix: String,
    ttl_secs: u64,
    /// Base of `skip_until_ms`.
    epoch: Instant,
    /// Milliseconds after `epoch` before which Redis is not tried.
    skip_until_ms: AtomicU64,
}

impl RedisTierCache {
    /// Does not connect: the first command does (and a Redis that is down at
    /// start-up only means cold lookups read the store).
    pub fn new(
        client: &redis::Client,
        prefix: &str,
        ttl: Duration,
    ) -> Result<Self, RedisAdapterError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(RedisAdapterError::Command)?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            ttl_secs: ttl.as_secs().max(1),
            epoch: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
        })
    }

    fn key(&self, id: &OrgId) -> String {
        format!("{}:tier:{id}", self.prefix)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `cmd` unless Redis failed recently; a failure opens the pause.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, TierCacheError> {
        if self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err(TierCacheError::Unavailable(
                "redis failed recently; skipped".into(),
            ));
        }
        let mut conn = self.conn.clone();
        let result = tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(&mut conn)).await;
        let error = match result {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {COMMAND_TIMEOUT:?}"),
        };
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(BACKOFF.as_millis()).unwrap_or(u64::MAX));
        self.skip_until_ms.store(until, Ordering::Relaxed);
        Err(TierCacheError::Unavailable(format!("redis: {error}")))
    }
}

#[async_trait]
impl TierCache for RedisTierCache {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, id: &OrgId) -> Result<Option<Organization>, TierCacheError> {
        let raw: Option<String> = self.run(redis::cmd("GET").arg(self.key(id))).await?;
        raw.map(|json| {
            serde_json::from_str(&json).map_err(|e| TierCacheError::Corrupt(format!("{id}: {e}")))
        })
        .transpose()
    }

    async fn put(&self, org: &Organization) -> Result<(), TierCacheError> {
        let json =
            serde_json::to_string(org).map_err(|e| TierCacheError::Corrupt(e.to_string()))?;
        self.run::<()>(
            redis::cmd("SET")
                .arg(self.key(&org.id))
                .arg(json)
                .arg("EX")
                .arg(self.ttl_secs),
        )
        .await
    }

    async fn invalidate(&self, id: &OrgId) -> Result<(), TierCacheError> {
        // Bypasses the pause: an announcement is worth a try every time.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.key(id))
            .ignore()
            .cmd("PUBLISH")
            .arg(invalidation_channel(&self.prefix))
            .arg(id.as_str())
            .ignore();
        let mut conn = self.conn.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT * 4, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(TierCacheError::Unavailable(format!("redis: {e}"))),
            Err(_) => Err(TierCacheError::Unavailable(
                "redis: invalidation timed out".into(),
            )),
        }
    }
}

/// Whether the invalidation listener is subscribed right now (for `/ready`).
#[derive(Debug, Default)]
pub struct ListenerStatus {
    subscribed: AtomicBool,
}

impl ListenerStatus {
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }
}

/// Subscribes to the invalidation channel until the process ends,
/// reconnecting with backoff; returns its status handle.
pub fn spawn_invalidation_listener(
    client: redis::Client,
    prefix: &str,
    registry: TenantRegistry,
) -> Arc<ListenerStatus> {
    let status = Arc::new(ListenerStatus::default());
    let channel = invalidation_channel(prefix);
    let shared = status.clone();
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(100);
        loop {
            match listen(&client, &channel, &registry, &shared).await {
                Ok(()) => tracing::warn!("tier invalidation channel closed; resubscribing"),
                Err(e) => tracing::debug!(error = %e, "tier invalidation channel unavailable"),
            }
            if shared.subscribed.swap(false, Ordering::Relaxed) {
                // It was up: try again soon.
                wait = Duration::from_millis(100);
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    });
    status
}

async fn listen(
    client: &redis::Client,
    channel: &str,
    registry: &TenantRegistry,
    status: &ListenerStatus,
) -> Result<(), RedisAdapterError> {
    let timeout = Duration::from_secs(2);
    let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
        .await
        .map_err(|_| RedisAdapterError::Timeout(timeout))??;
    pubsub.subscribe(channel).await?;
    status.subscribed.store(true, Ordering::Relaxed);
    metrics::counter!("dynabase_tier_invalidation_subscriptions_total").increment(1);
    tracing::info!(channel, "subscribed to tier invalidations");
    // Announcements sent while this replica was not subscribed are lost.
    let report = registry.reload_all().await;
    if report.failed > 0 {
        tracing::warn!(
            failed = report.failed,
            "some tenants could not be reloaded after subscribing"
        );
    }
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let Ok(payload) = msg.get_payload::<String>() else {
            continue;
        };
        let Ok(id) = OrgId::parse(&payload) else {
            tracing::warn!(%payload, "ignoring a malformed tier invalidation");
            continue;
        };
        metrics::counter!("dynabase_tier_invalidations_received_total").increment(1);
        // Reload in the background so a slow store does not hold up the
        // channel (and the messages behind this one).
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = registry.reload(&id).await {
                tracing::warn!(org = %id, error = %e, "tier reload after invalidation failed");
            }
        });
    }
    Ok(())
}
