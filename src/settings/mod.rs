//! Configuration: loaded once at start-up into typed structs.
//!
//! [`load`] layers the sources (see `config/default.toml`), [`validate`] turns
//! the raw tree into [`Settings`] while collecting *every* problem, so that
//! `dynabase configcheck` can list them all at once.

mod checker;
mod load;
mod raw;
mod secret;
mod validate;

use std::{path::PathBuf, time::Duration};

use dynabase_actors::{
    domain::{billing::PriceMap, catalog::LifecyclePolicy, jobs::Backoff},
    TierCatalog, UsageFactors,
};

pub use load::{load, LoadOptions};
pub use secret::Secret;
pub use validate::api_base_url;

/// A configuration problem: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration has {} problem(s):\n{}", .0.len(), list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    pub proxy: ProxySettings,
    pub limits: LimitSettings,
    /// This process's id among replicas.
    pub replica_id: String,
    pub store: StoreSettings,
    /// `None` runs on in-process state.
    pub redis: Option<RedisSettings>,
    pub shutdown_deadline: Duration,
    pub lifecycle: LifecyclePolicy,
    pub schedule: ScheduleSettings,
    pub tier_cache: TierCacheSettings,
    pub stripe: StripeSettings,
    pub notifications: NotificationSettings,
    pub usage: UsageSettings,
    pub billing: BillingSettings,
    pub calibration: CalibrationSettings,
    pub scale_to_zero: ScaleToZeroSettings,
    pub catalog: TierCatalog,
    pub log_filter: String,
    /// `log.format = "json"`: one JSON object per line.
    pub log_json: bool,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    /// Empty only in development mode.
    pub admin_token: Secret,
    pub dev_mode: bool,
}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub host: String,
    pub port: u16,
    /// Session threads, each with its own single-threaded runtime (≥ 1).
    pub worker_threads: usize,
    /// A new session goes to the first thread with fewer live sessions than
    /// this; when every thread has this many, to the least-loaded one
    /// (zero: always the least-loaded).
    pub pack_sessions: usize,
    /// How long an idle session thread keeps polling for I/O after the
    /// last relayed read before it sleeps (zero: sleep at once).
    pub busy_poll: Duration,
    /// Relay established plain-TCP sessions of organizations without a QPS
    /// limit on a readiness loop beside each session thread.
    pub event_loop: bool,
    pub handshake_timeout: Duration,
    pub auth_timeout: Duration,
    pub connect_timeout: Duration,
    /// Certificate chain and key (PEM), when TLS is on.
    pub tls: Option<TlsFiles>,
    pub require_tls: bool,
    pub sni_domain: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// The default mode (an operator's switch in the store wins).
    pub enforcement: dynabase_actors::tenant::enforcement::Enforcement,
    pub max_queue_delay: Duration,
    pub central_below_qps: u32,
    pub sync_interval: Duration,
    pub lease_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub data_dir: PathBuf,
    /// `None` uses the embedded store under `data_dir`.
    pub mongodb: Option<MongoSettings>,
}

#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub url: Secret,
    pub database: String,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: Secret,
    /// Prefix of every key and channel, so deployments sharing a Redis stay
    /// apart.
    pub key_prefix: String,
}

/// When the lifecycle scheduler runs.
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    pub tick_interval: std::time::Duration,
    /// Lets `POST /admin/lifecycle/tick` pass a time in the future (tests).
    pub allow_clock_override: bool,
}

/// The shared tier cache and re-verification of in-process tiers.
#[derive(Debug, Clone)]
pub struct TierCacheSettings {
    pub ttl: std::time::Duration,
    pub refresh_interval: std::time::Duration,
}

/// Stripe: webhooks in, invoice items out.
#[derive(Debug, Clone)]
pub struct StripeSettings {
    /// Empty: `/webhooks/stripe` answers 503.
    pub webhook_secret: Secret,
    pub prices: PriceMap,
    /// Secret API key for invoice items; empty: none are created.
    pub api_key: Secret,
    /// `None`: Stripe's own API. Always ends with `/`.
    pub api_base: Option<String>,
    /// Per API request.
    pub request_timeout: Duration,
}

/// Outbound notification webhooks.
#[derive(Debug, Clone)]
pub struct NotificationSettings {
    /// Empty: deliveries carry no signature header.
    pub signing_secret: Secret,
    pub max_attempts: u32,
    pub backoff: Backoff,
}

/// `[calibration]` and `[railway]`.
#[derive(Debug, Clone)]
pub struct CalibrationSettings {
    pub config: dynabase_actors::calibration::CalibrationConfig,
    pub interval: Duration,
    /// Empty: no API; manual bills only.
    pub railway_token: Secret,
    pub railway_project_id: String,
    /// `None`: Railway's public endpoint.
    pub railway_url: Option<String>,
    pub railway_timeout: Duration,
}

/// `[billing]`.
#[derive(Debug, Clone)]
pub struct BillingSettings {
    pub config: dynabase_actors::billing::BillingConfig,
    /// How often the billing job runs.
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct UsageSettings {
    pub enabled: bool,
    pub flush_interval: Duration,
    pub max_pending_records: usize,
    pub retry_max_backoff: Duration,
    pub warning_check_interval: Duration,
    pub factors: UsageFactors,
}

/// `[scale_to_zero]` (which tiers may scale to zero is in the tier catalog).
#[derive(Debug, Clone)]
pub struct ScaleToZeroSettings {
    pub config: dynabase_actors::scale_to_zero::ScaleConfig,
    /// How often idle organizations are looked for.
    pub tick_interval: Duration,
    /// `railway.poll_interval`: the `railway` driver's status reads.
    pub railway_poll_interval: Duration,
    /// `railway.wake_timeout`, at most `step_lease`: the `railway` driver's
    /// longest wake.
    pub railway_wake_timeout: Duration,
}
