//! Configuration values: arbitrary values for every key the operator sets
//! through the environment, and an arbitrary TOML overlay file, loaded and
//! validated as at start-up. Every outcome must be `Ok` or a list of
//! problems, never a panic.
//!
//! Input: records separated by NUL. A record starting with 0xff is the TOML
//! overlay (`$DYNABASE_ENV.toml`); otherwise its first byte picks a variable
//! from [`VARS`] (the last pick is a free `DYNABASE__` name taken from the
//! value up to `=`) and the rest is the value.

#![no_main]

use std::{collections::HashMap, path::PathBuf, sync::OnceLock};

use dynabase::settings::{load, LoadOptions, SettingsError};
use libfuzzer_sys::fuzz_target;

/// Every key of `config/default.toml` and `config/tiers.toml` as its
/// `DYNABASE__` variable, then the conventional variables.
const VARS: &[&str] = &[
    "DYNABASE__HTTP__HOST",
    "DYNABASE__HTTP__PORT",
    "DYNABASE__HTTP__ADMIN_TOKEN",
    "DYNABASE__HTTP__DEV_MODE",
    "DYNABASE__PROXY__HOST",
    "DYNABASE__PROXY__PORT",
    "DYNABASE__PROXY__WORKER_THREADS",
    "DYNABASE__PROXY__PACK_SESSIONS",
    "DYNABASE__PROXY__BUSY_POLL",
    "DYNABASE__PROXY__EVENT_LOOP",
    "DYNABASE__PROXY__HANDSHAKE_TIMEOUT",
    "DYNABASE__PROXY__AUTH_TIMEOUT",
    "DYNABASE__PROXY__CONNECT_TIMEOUT",
    "DYNABASE__PROXY__TLS_CERT",
    "DYNABASE__PROXY__TLS_KEY",
    "DYNABASE__PROXY__REQUIRE_TLS",
    "DYNABASE__PROXY__SNI_DOMAIN",
    "DYNABASE__LIMITS__MAX_QUEUE_DELAY",
    "DYNABASE__LIMITS__CENTRAL_BELOW_QPS",
    "DYNABASE__LIMITS__SYNC_INTERVAL",
    "DYNABASE__LIMITS__LEASE_TTL",
    "DYNABASE__REPLICA__ID",
    "DYNABASE__STORE__DATA_DIR",
    "DYNABASE__STORE__MONGODB_URL",
    "DYNABASE__STORE__MONGODB_DATABASE",
    "DYNABASE__REDIS__URL",
    "DYNABASE__REDIS__KEY_PREFIX",
    "DYNABASE__SHUTDOWN__DEADLINE",
    "DYNABASE__LIFECYCLE__DOWNGRADE_GRACE",
    "DYNABASE__LIFECYCLE__PAYMENT_FAILURE_GRACE",
    "DYNABASE__LIFECYCLE__TICK_INTERVAL",
    "DYNABASE__LIFECYCLE__ALLOW_CLOCK_OVERRIDE",
    "DYNABASE__TIER_CACHE__TTL",
    "DYNABASE__TIER_CACHE__REFRESH_INTERVAL",
    "DYNABASE__STRIPE__WEBHOOK_SECRET",
    "DYNABASE__STRIPE__API_KEY",
    "DYNABASE__STRIPE__API_BASE",
    "DYNABASE__STRIPE__REQUEST_TIMEOUT",
    "DYNABASE__NOTIFICATIONS__SIGNING_SECRET",
    "DYNABASE__NOTIFICATIONS__MAX_ATTEMPTS",
    "DYNABASE__NOTIFICATIONS__RETRY_BASE",
    "DYNABASE__NOTIFICATIONS__RETRY_MAX",
    "DYNABASE__USAGE__ENABLED",
    "DYNABASE__USAGE__FLUSH_INTERVAL",
    "DYNABASE__USAGE__MAX_PENDING_RECORDS",
    "DYNABASE__USAGE__RETRY_MAX_BACKOFF",
    "DYNABASE__USAGE__WARNING_CHECK_INTERVAL",
    "DYNABASE__USAGE__FACTORS__SELECT__COMPLEXITY",
    "DYNABASE__USAGE__FACTORS__SELECT__PARALLELISM",
    "DYNABASE__USAGE__FACTORS__INSERT__COMPLEXITY",
    "DYNABASE__USAGE__FACTORS__INSERT__PARALLELISM",
    "DYNABASE__USAGE__FACTORS__UPDATE__COMPLEXITY",
    "DYNABASE__USAGE__FACTORS__UPDATE__PARALLELISM",
    "DYNABASE__USAGE__FACTORS__DELETE__COMPLEXITY",
    "DYNABASE__USAGE__FACTORS__DELETE__PARALLELISM",
    "DYNABASE__USAGE__FACTORS__DDL__COMPLEXITY",
    "DYNABASE__USAGE__FACTORS__DDL__PARALLELISM",
    "DYNABASE__USAGE__FACTORS__OTHER__COMPLEXITY",
    "DYNABASE__USAGE__FACTORS__OTHER__PARALLELISM",
    "DYNABASE__BILLING__SETTLE_DELAY",
    "DYNABASE__BILLING__INTERVAL",
    "DYNABASE__BILLING__CURRENCY",
    "DYNABASE__BILLING__LEASE",
    "DYNABASE__BILLING__RETRY_BASE",
    "DYNABASE__BILLING__RETRY_MAX",
    "DYNABASE__BILLING__FREE_SOFT_PERIOD",
    "DYNABASE__BILLING__UPGRADE_URL",
    "DYNABASE__BILLING__MODE",
    "DYNABASE__CALIBRATION__VCPU_MINUTE_PRICE",
    "DYNABASE__CALIBRATION__GB_MINUTE_PRICE",
    "DYNABASE__CALIBRATION__THRESHOLD",
    "DYNABASE__CALIBRATION__SETTLE_DELAY",
    "DYNABASE__CALIBRATION__INTERVAL",
    "DYNABASE__RAILWAY__API_TOKEN",
    "DYNABASE__RAILWAY__PROJECT_ID",
    "DYNABASE__RAILWAY__API_URL",
    "DYNABASE__RAILWAY__REQUEST_TIMEOUT",
    "DYNABASE__SCALE_TO_ZERO__ENABLED",
    "DYNABASE__SCALE_TO_ZERO__IDLE_AFTER",
    "DYNABASE__SCALE_TO_ZERO__WAKE_DEADLINE",
    "DYNABASE__SCALE_TO_ZERO__TICK_INTERVAL",
    "DYNABASE__SCALE_TO_ZERO__STEP_LEASE",
    "DYNABASE__LOG__FILTER",
    "DYNABASE__TIERS__FREE__MAX_CONNECTIONS",
    "DYNABASE__TIERS__FREE__QPS",
    "DYNABASE__TIERS__FREE__BASE_FEE",
    "DYNABASE__TIERS__FREE__INCLUDED_VCPU_HOURS",
    "DYNABASE__TIERS__FREE__OVERAGE_PER_VCPU_HOUR",
    "DYNABASE__TIERS__FREE__SCALE_TO_ZERO",
    "DYNABASE__TIERS__FREE__SESSION__STATEMENT_TIMEOUT",
    "DYNABASE__TIERS__FREE__SESSION__WORK_MEM",
    "DYNABASE__TIERS__FREE__SESSION__TEMP_BUFFERS",
    "DYNABASE__TIERS__STARTER__MAX_CONNECTIONS",
    "DYNABASE__TIERS__STARTER__QPS",
    "DYNABASE__TIERS__STARTER__BASE_FEE",
    "DYNABASE__TIERS__STARTER__INCLUDED_VCPU_HOURS",
    "DYNABASE__TIERS__STARTER__OVERAGE_PER_VCPU_HOUR",
    "DYNABASE__TIERS__STARTER__SCALE_TO_ZERO",
    "DYNABASE__TIERS__STARTER__SESSION__STATEMENT_TIMEOUT",
    "DYNABASE__TIERS__STARTER__SESSION__WORK_MEM",
    "DYNABASE__TIERS__STARTER__SESSION__TEMP_BUFFERS",
    "DYNABASE__TIERS__PRO__MAX_CONNECTIONS",
    "DYNABASE__TIERS__PRO__QPS",
    "DYNABASE__TIERS__PRO__BASE_FEE",
    "DYNABASE__TIERS__PRO__INCLUDED_VCPU_HOURS",
    "DYNABASE__TIERS__PRO__OVERAGE_PER_VCPU_HOUR",
    "DYNABASE__TIERS__PRO__SCALE_TO_ZERO",
    "DYNABASE__TIERS__PRO__SESSION__STATEMENT_TIMEOUT",
    "DYNABASE__TIERS__PRO__SESSION__WORK_MEM",
    "DYNABASE__TIERS__PRO__SESSION__TEMP_BUFFERS",
    "DYNABASE__TIERS__ENTERPRISE__MAX_CONNECTIONS",
    "DYNABASE__TIERS__ENTERPRISE__QPS",
    "DYNABASE__TIERS__ENTERPRISE__BASE_FEE",
    "DYNABASE__TIERS__ENTERPRISE__INCLUDED_VCPU_HOURS",
    "DYNABASE__TIERS__ENTERPRISE__OVERAGE_PER_VCPU_HOUR",
    "DYNABASE__TIERS__ENTERPRISE__SCALE_TO_ZERO",
    "DYNABASE__TIERS__ENTERPRISE__SESSION__STATEMENT_TIMEOUT",
    "DYNABASE__TIERS__ENTERPRISE__SESSION__WORK_MEM",
    "DYNABASE__TIERS__ENTERPRISE__SESSION__TEMP_BUFFERS",
    "PORT",
    "MONGODB_URL",
    "REDIS_URL",
    "DYNABASE_ADMIN_TOKEN",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_API_KEY",
    "RAILWAY_API_TOKEN",
    "DYNABASE_NOTIFICATION_SECRET",
    "RAILWAY_REPLICA_ID",
];

/// A directory of its own for the overlay file, made once per process.
fn config_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dynabase-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the config directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = config_dir();
    let overlay = dir.join("fuzz.toml");
    let mut env = HashMap::new();
    let mut toml: Option<&[u8]> = None;
    for record in data.split(|&b| b == 0) {
        let Some((&pick, value)) = record.split_first() else {
            continue;
        };
        if pick == 0xff {
            toml = Some(value);
            continue;
        }
        let value = String::from_utf8_lossy(value).into_owned();
        let index = usize::from(pick) % (VARS.len() + 1);
        match VARS.get(index) {
            Some(var) => {
                env.insert((*var).to_owned(), value);
            }
            None => {
                let (name, value) = value.split_once('=').unwrap_or((&value, ""));
                env.insert(format!("DYNABASE__{name}"), value.to_owned());
            }
        }
    }
    match toml {
        Some(text) => {
            std::fs::write(&overlay, text).expect("write the overlay");
            env.insert("DYNABASE_ENV".to_owned(), "fuzz".to_owned());
        }
        None => {
            let _ = std::fs::remove_file(&overlay);
        }
    }
    let options = LoadOptions {
        config_dir: dir.clone(),
        env,
    };
    match load(&options) {
        Ok(settings) => {
            let _ = format!("{settings:?}");
        }
        Err(SettingsError::Invalid(problems)) => assert!(!problems.is_empty()),
    }
});
