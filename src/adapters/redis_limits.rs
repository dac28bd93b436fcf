//! `RedisLimits`: the shared-limits port over Redis — org-wide connection
//! leases, a central GCRA for small tiers, demand-proportional QPS shares
//! for the others, and replica heartbeats. See `docs/rate-limits.md`.
//!
//! Every Redis call is bounded by a short timeout; a failure marks the state
//! degraded (the actors then use local shares) until a heartbeat succeeds.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use dashmap::DashMap;
use dynabase_actors::{
    shared_limits::{SharedHealth, SharedLimits, SharedLimitsError, SyncRequest},
    OrgId,
};
use redis::{aio::ConnectionManager, aio::ConnectionManagerConfig, Script};

const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// The heartbeat's pause while degraded (at most).
const DEGRADED_PAUSE: Duration = Duration::from_secs(1);
/// How long a replica keeps its local shares after Redis answers again,
/// registering its leases on every heartbeat meanwhile: long enough for
/// every other degraded replica (retrying every `DEGRADED_PAUSE`, a connect
/// taking up to 2 × `CALL_TIMEOUT`) to have registered its own, so nobody
/// admits on shared limits that miss sessions admitted on local shares.
const RECOVERY_SETTLE: Duration = Duration::from_secs(2);

/// Settings for [`RedisLimits`].
#[derive(Debug, Clone)]
pub struct RedisLimitsConfig {
    pub replica_id: String,
    pub key_prefix: String,
    /// A lease or heartbeat not refreshed for this long expires.
    pub lease_ttl: Duration,
    /// Demand older than this no longer counts towards shares.
    pub demand_max_age: Duration,
    /// How often the heartbeat runs (and a degraded state is re-checked).
    pub heartbeat: Duration,
}

struct Scripts {
    acquire: Script,
    count: Script,
    take_query: Script,
    sync: Script,
    heartbeat: Script,
}

pub struct RedisLimits {
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    config: RedisLimitsConfig,
    scripts: Scripts,
    /// Leases this replica holds, per organization (refreshed by `sync`).
    held: DashMap<OrgId, HashSet<String>>,
    degraded: AtomicBool,
    replicas: AtomicU32,
}

/// Where the heartbeat is in leaving the degraded state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// Not degraded, or Redis still unreachable.
    Idle,
    /// Redis answered at this instant; leases registered, shares still local.
    Since(tokio::time::Instant),
}

#[derive(Debug, thiserror::Error)]
pub enum RedisLimitsError {
    #[error("invalid Redis URL: {0}")]
    BadUrl(redis::RedisError),
}

fn err(e: impl std::fmt::Display) -> SharedLimitsError {
    SharedLimitsError(e.to_string())
}

impl RedisLimits {
    /// Creates the adapter; the connection is made by [`Self::run_heartbeat`]
    /// (until then, and whenever Redis is unreachable, it reports degraded).
    pub fn new(url: &str, config: RedisLimitsConfig) -> Result<Arc<Self>, RedisLimitsError> {
        let client = redis::Client::open(url).map_err(RedisLimitsError::BadUrl)?;
        metrics::gauge!("dynabase_redis_degraded").set(1.0);
        Ok(Arc::new(Self {
            client,
            conn: ArcSwapOption::empty(),
            config,
            scripts: Scripts {
                acquire: Script::new(include_str!("lua/acquire_connection.lua")),
                count: Script::new(include_str!("lua/count_connections.lua")),
                take_query: Script::new(include_str!("lua/take_query.lua")),
                sync: Script::new(include_str!("lua/sync.lua")),
                heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
            },
            held: DashMap::new(),
            degraded: AtomicBool::new(true),
            replicas: AtomicU32::new(1),
        }))
    }

    fn key(&self, org: &OrgId, what: &str) -> String {
        format!("{}:{{{org}}}:{what}", self.config.key_prefix)
    }

    async fn connection(&self) -> Result<ConnectionManager, SharedLimitsError> {
        if let Some(conn) = self.conn.load_full() {
            return Ok((*conn).clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            CALL_TIMEOUT * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| err("connect timed out"))?
        .map_err(err)?;
        self.conn.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    /// Runs one script invocation with the call timeout, counting it.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, SharedLimitsError> {
        metrics::counter!("dynabase_redis_calls_total", "op" => op).increment(1);
        let mut conn = self.connection().await?;
        match tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(err(e)),
            Err(_) => Err(err("redis call timed out")),
        }
    }

    /// Heartbeat loop: keeps this replica registered, learns the replica
    /// count, and clears the degraded state once Redis answers again — after
    /// registering the leases of every session this replica holds (those
    /// admitted on local shares included) and, after an outage,
    /// [`RECOVERY_SETTLE`] later.
    pub async fn run_heartbeat(self: Arc<Self>) {
        let mut recovery = Recovery::Idle;
        let mut outage_seen = false;
        loop {
            let ttl = self.config.lease_ttl.as_millis().to_string();
            let key = format!("{}:replicas", self.config.key_prefix);
            let mut invocation = self.scripts.heartbeat.key(&key);
            invocation.arg(&self.config.replica_id).arg(&ttl);
            let beat = self.invoke::<u32>("heartbeat", invocation).await;
            let beat = match beat {
                Ok(n) if self.degraded.load(Ordering::Relaxed) => {
                    self.register_held().await.map(|()| n)
                }
                other => other,
            };
            match beat {
                Ok(n) => {
                    let degraded = self.degraded.load(Ordering::Relaxed);
                    if degraded {
                        // A restarted Redis knows only the replicas that have
                        // beaten since: the local shares must not grow meanwhile.
                        self.replicas.fetch_max(n.max(1), Ordering::Relaxed);
                    } else {
                        self.replicas.store(n.max(1), Ordering::Relaxed);
                    }
                    metrics::gauge!("dynabase_replicas").set(f64::from(n));
                    let now = tokio::time::Instant::now();
                    let settled = match recovery {
                        Recovery::Since(at) => now.duration_since(at) >= RECOVERY_SETTLE,
                        Recovery::Idle => {
                            recovery = Recovery::Since(now);
                            false
                        }
                    };
                    if !degraded {
                        recovery = Recovery::Idle;
                    } else if settled || !outage_seen {
                        // At start-up (no failure seen yet) there is no
                        // outage whose local-share sessions must be registered.
                        recovery = Recovery::Idle;
                        if self.degraded.swap(false, Ordering::Relaxed) {
                            tracing::info!(replicas = n, "redis reachable: shared limits in force");
                            metrics::gauge!("dynabase_redis_degraded").set(0.0);
                        }
                    }
                }
                Err(e) => {
                    recovery = Recovery::Idle;
                    outage_seen = true;
                    self.mark_degraded(&e);
                }
            }
            metrics::gauge!("dynabase_connection_leases_held")
                .set(self.held.iter().map(|h| h.len()).sum::<usize>() as f64);
            let pause = if self.degraded.load(Ordering::Relaxed) {
                self.config.heartbeat.min(DEGRADED_PAUSE)
            } else {
                self.config.heartbeat
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Registers every lease this replica holds, whatever the limit: the
    /// sessions exist. (The lease set may be empty after a Redis restart, or
    /// miss sessions admitted on local shares.)
    async fn register_held(&self) -> Result<(), SharedLimitsError> {
        let orgs: Vec<OrgId> = self
            .held
            .iter()
            .filter(|e| !e.value().is_empty())
            .map(|e| e.key().clone())
            .collect();
        for org in orgs {
            let request = SyncRequest {
                qps: None,
                demand: 0,
            };
            self.sync(&org, request).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl SharedLimits for RedisLimits {
    async fn acquire_connection(
        &self,
        org: &OrgId,
        limit: u32,
        lease: &str,
    ) -> Result<bool, SharedLimitsError> {
        let key = self.key(org, "conns");
        let ttl = self.config.lease_ttl.as_millis().to_string();
        let mut invocation = self.scripts.acquire.key(&key);
        invocation.arg(limit).arg(lease).arg(&ttl);
        let granted = self.invoke::<i64>("acquire_connection", invocation).await? == 1;
        if granted {
            self.held
                .entry(org.clone())
                .or_default()
                .insert(lease.to_owned());
        }
        Ok(granted)
    }

    async fn connections(&self, org: &OrgId) -> Result<u32, SharedLimitsError> {
        let key = self.key(org, "conns");
        let count = self
            .invoke::<i64>("count_connections", self.scripts.count.key(&key))
            .await?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    fn hold_connection(&self, org: &OrgId, lease: &str) {
        self.held
            .entry(org.clone())
            .or_default()
            .insert(lease.to_owned());
    }

    fn release_connection(&self, org: &OrgId, lease: &str) {
        if let Some(mut leases) = self.held.get_mut(org) {
            leases.remove(lease);
        }
        let Some(conn) = self.conn.load_full() else {
            return;
        };
        let (key, lease) = (self.key(org, "conns"), lease.to_owned());
        metrics::counter!("dynabase_redis_calls_total", "op" => "release_connection").increment(1);
        tokio::spawn(async move {
            let mut conn = (*conn).clone();
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(&key).arg(&lease);
            // If this fails the lease expires on its own within the TTL.
            let _ = tokio::time::timeout(CALL_TIMEOUT, zrem.query_async::<i64>(&mut conn)).await;
        });
    }

    async fn take_query(
        &self,
        org: &OrgId,
        qps: u32,
        burst: u32,
    ) -> Result<Option<Duration>, SharedLimitsError> {
        let key = self.key(org, "qps");
        let interval_us = 1_000_000 / u64::from(qps.max(1));
        let mut invocation = self.scripts.take_query.key(&key);
        invocation.arg(interval_us).arg(burst.max(1));
        let wait_us = self.invoke::<i64>("take_query", invocation).await?;
        Ok((wait_us >= 0).then(|| Duration::from_micros(wait_us.unsigned_abs())))
    }

    async fn sync(
        &self,
        org: &OrgId,
        request: SyncRequest,
    ) -> Result<Option<f64>, SharedLimitsError> {
        let leases: Vec<String> = self
            .held
            .get(org)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        let (conns, demand) = (self.key(org, "conns"), self.key(org, "demand"));
        let mut invocation = self.scripts.sync.key(&conns);
        invocation
            .key(&demand)
            .arg(&self.config.replica_id)
            .arg(self.config.lease_ttl.as_millis().to_string())
            .arg(request.qps.unwrap_or(0))
            .arg(request.demand)
            .arg(self.config.demand_max_age.as_millis().to_string());
        for lease in &leases {
            invocation.arg(lease);
        }
        let milli_qps = self.invoke::<i64>("sync", invocation).await?;
        Ok((milli_qps >= 0).then(|| milli_qps as f64 / 1000.0))
    }

    fn health(&self) -> SharedHealth {
        SharedHealth {
            degraded: self.degraded.load(Ordering::Relaxed),
            replicas: self.replicas.load(Ordering::Relaxed),
        }
    }

    fn mark_degraded(&self, error: &SharedLimitsError) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "redis unreachable: falling back to local shares of the limits");
            metrics::gauge!("dynabase_redis_degraded").set(1.0);
            metrics::counter!("dynabase_redis_degradations_total").increment(1);
        }
    }
}
