//! The configuration as written: loose types, so that one pass can report
//! every problem (a negative limit is a validation message, not a parse abort).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct RawSettings {
    pub http: RawHttp,
    pub proxy: RawProxy,
    pub limits: RawLimits,
    pub replica: RawReplica,
    pub store: RawStore,
    pub redis: RawRedis,
    pub shutdown: RawShutdown,
    pub lifecycle: RawLifecycle,
    pub tier_cache: RawTierCache,
    pub stripe: RawStripe,
    pub notifications: RawNotifications,
    pub usage: RawUsage,
    pub billing: RawBilling,
    pub calibration: RawCalibration,
    pub railway: RawRailway,
    pub scale_to_zero: RawScaleToZero,
    pub log: RawLog,
    pub tiers: BTreeMap<String, RawTier>,
}

#[derive(Debug, Deserialize)]
pub struct RawHttp {
    pub host: String,
    pub port: i64,
    pub admin_token: String,
    pub dev_mode: bool,
}

#[derive(Debug, Deserialize)]
pub struct RawProxy {
    pub host: String,
    pub port: i64,
    pub worker_threads: i64,
    pub pack_sessions: i64,
    pub busy_poll: String,
    pub event_loop: bool,
    pub handshake_timeout: String,
    pub auth_timeout: String,
    pub connect_timeout: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub require_tls: bool,
    pub sni_domain: String,
}

#[derive(Debug, Deserialize)]
pub struct RawLimits {
    pub enforcement: String,
    pub max_queue_delay: String,
    pub central_below_qps: i64,
    pub sync_interval: String,
    pub lease_ttl: String,
}

#[derive(Debug, Deserialize)]
pub struct RawReplica {
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub struct RawStore {
    pub data_dir: String,
    pub mongodb_url: String,
    pub mongodb_database: String,
}

#[derive(Debug, Deserialize)]
pub struct RawRedis {
    pub url: String,
    pub key_prefix: String,
}

#[derive(Debug, Deserialize)]
pub struct RawShutdown {
    pub deadline: String,
}

#[derive(Debug, Deserialize)]
pub struct RawLifecycle {
    pub downgrade_grace: String,
    pub payment_failure_grace: String,
    pub tick_interval: String,
    pub allow_clock_override: bool,
}

#[derive(Debug, Deserialize)]
pub struct RawTierCache {
    pub ttl: String,
    pub refresh_interval: String,
}

#[derive(Debug, Deserialize)]
pub struct RawStripe {
    pub webhook_secret: String,
    pub api_key: String,
    pub api_base: String,
    pub request_timeout: String,
    /// Price id or lookup key → tier name. An empty table may be dropped by
    /// the configuration layers, hence the default.
    #[serde(default)]
    pub prices: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct RawNotifications {
    pub signing_secret: String,
    pub max_attempts: i64,
    pub retry_base: String,
    pub retry_max: String,
}

#[derive(Debug, Deserialize)]
pub struct RawUsage {
    pub enabled: bool,
    pub flush_interval: String,
    pub max_pending_records: i64,
    pub retry_max_backoff: String,
    pub warning_check_interval: String,
    pub factors: BTreeMap<String, RawFactor>,
}

#[derive(Debug, Deserialize)]
pub struct RawFactor {
    pub complexity: f64,
    pub parallelism: f64,
}

#[derive(Debug, Deserialize)]
pub struct RawBilling {
    pub settle_delay: String,
    pub interval: String,
    pub currency: String,
    pub lease: String,
    pub retry_base: String,
    pub retry_max: String,
    pub free_soft_period: String,
    pub upgrade_url: String,
    pub mode: String,
}

#[derive(Debug, Deserialize)]
pub struct RawCalibration {
    pub vcpu_minute_price: String,
    pub gb_minute_price: String,
    pub threshold: String,
    pub settle_delay: String,
    pub interval: String,
}

#[derive(Debug, Deserialize)]
pub struct RawRailway {
    pub api_token: String,
    pub project_id: String,
    pub api_url: String,
    pub request_timeout: String,
    pub poll_interval: String,
    pub wake_timeout: String,
}

#[derive(Debug, Deserialize)]
pub struct RawScaleToZero {
    pub enabled: bool,
    pub idle_after: String,
    pub wake_deadline: String,
    pub tick_interval: String,
    pub step_lease: String,
}

#[derive(Debug, Deserialize)]
pub struct RawLog {
    pub filter: String,
    pub format: String,
}

/// A number or a word (`"unlimited"`), as some tier values allow.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum NumberOrWord {
    Number(i64),
    Word(String),
}

#[derive(Debug, Deserialize)]
pub struct RawTier {
    pub max_connections: i64,
    pub qps: NumberOrWord,
    pub burst: Option<i64>,
    pub base_fee: String,
    pub included_vcpu_hours: String,
    pub overage_per_vcpu_hour: String,
    pub scale_to_zero: bool,
    pub session: RawSession,
}

#[derive(Debug, Deserialize)]
pub struct RawSession {
    pub statement_timeout: String,
    pub work_mem: String,
    pub temp_buffers: String,
}
