//! From [`RawSettings`] to [`Settings`], collecting every problem.

use std::{path::PathBuf, str::FromStr, time::Duration};

use dynabase_actors::{
    billing::{BillingConfig, BillingMode},
    calibration::CalibrationConfig,
    domain::{billing::PriceMap, catalog::LifecyclePolicy, jobs::Backoff},
    tenant::enforcement::Enforcement,
    SessionSettings, Tier, TierCatalog, TierLimits, UsageFactors,
};
use rust_decimal::Decimal;

use super::{
    checker::Checker, raw::RawSettings, BillingSettings, CalibrationSettings, HttpSettings,
    LimitSettings, MongoSettings, NotificationSettings, Problem, ProxySettings, RedisSettings,
    ScaleToZeroSettings, ScheduleSettings, Secret, Settings, StoreSettings, StripeSettings,
    TierCacheSettings, TlsFiles, UsageSettings,
};

/// Longest accepted `proxy.busy_poll`.
const MAX_BUSY_POLL: Duration = Duration::from_millis(10);
pub(super) fn validate(raw: RawSettings) -> Result<Settings, Vec<Problem>> {
    let mut c = Checker::default();

    let http = HttpSettings {
        host: raw.http.host,
        port: c.port("http.port", raw.http.port),
        admin_token: Secret::new(raw.http.admin_token),
        dev_mode: raw.http.dev_mode,
    };
    let tls = match (raw.proxy.tls_cert.is_empty(), raw.proxy.tls_key.is_empty()) {
        (true, true) => None,
        (false, false) => Some(TlsFiles {
            cert: PathBuf::from(&raw.proxy.tls_cert),
            key: PathBuf::from(&raw.proxy.tls_key),
        }),
        _ => {
            c.fail(
                "proxy.tls_cert",
                "tls_cert and tls_key must be set together",
            );
            None
        }
    };
    if raw.proxy.require_tls && tls.is_none() {
        c.fail(
            "proxy.require_tls",
            "needs proxy.tls_cert and proxy.tls_key",
        );
    }
    let proxy = ProxySettings {
        host: raw.proxy.host,
        port: c.port("proxy.port", raw.proxy.port),
        worker_threads: match c.count("proxy.worker_threads", raw.proxy.worker_threads, 0) {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n as usize,
        },
        pack_sessions: c.count("proxy.pack_sessions", raw.proxy.pack_sessions, 0) as usize,
        busy_poll: {
            let d = c.duration("proxy.busy_poll", &raw.proxy.busy_poll);
            // Spinning longer than a slow query's round trip only burns CPU.
            if d > MAX_BUSY_POLL {
                c.fail(
                    "proxy.busy_poll",
                    format!("must be at most {MAX_BUSY_POLL:?} (\"0s\" turns it off)"),
                );
            }
            d
        },
        event_loop: raw.proxy.event_loop,
        handshake_timeout: c
            .positive_duration("proxy.handshake_timeout", &raw.proxy.handshake_timeout),
        auth_timeout: c.positive_duration("proxy.auth_timeout", &raw.proxy.auth_timeout),
        connect_timeout: c.positive_duration("proxy.connect_timeout", &raw.proxy.connect_timeout),
        tls,
        require_tls: raw.proxy.require_tls,
        sni_domain: (!raw.proxy.sni_domain.is_empty()).then(|| raw.proxy.sni_domain.clone()),
    };
    let mongodb = (!raw.store.mongodb_url.is_empty()).then(|| MongoSettings {
        url: Secret::new(raw.store.mongodb_url.clone()),
        database: raw.store.mongodb_database.clone(),
    });
    if let Some(m) = &mongodb {
        if !(m.url.expose().starts_with("mongodb://")
            || m.url.expose().starts_with("mongodb+srv://"))
        {
            c.fail(
                "store.mongodb_url",
                "must start with mongodb:// or mongodb+srv://",
            );
        }
        if m.database.is_empty() {
            c.fail("store.mongodb_database", "must not be empty");
        }
    }
    if raw.store.data_dir.is_empty() {
        c.fail("store.data_dir", "must not be empty");
    }
    let redis = (!raw.redis.url.is_empty()).then(|| RedisSettings {
        url: Secret::new(raw.redis.url.clone()),
        key_prefix: raw.redis.key_prefix.clone(),
    });
    if raw.redis.key_prefix.is_empty() || raw.redis.key_prefix.contains(char::is_whitespace) {
        c.fail(
            "redis.key_prefix",
            "must be a non-empty word without spaces",
        );
    }
    if let Some(r) = &redis {
        if !(r.url.expose().starts_with("redis://") || r.url.expose().starts_with("rediss://")) {
            c.fail("redis.url", "must start with redis:// or rediss://");
        }
    }

    let mut tiers = Vec::new();
    for (name, raw_tier) in &raw.tiers {
        match Tier::from_str(name) {
            Ok(tier) => tiers.push(c.tier(tier, raw_tier)),
            Err(e) => c.fail(format!("tiers.{name}"), e.to_string()),
        }
    }
    let catalog = TierCatalog::new(tiers).unwrap_or_else(|missing| {
        c.fail(format!("tiers.{}", missing.as_str()), "missing tier");
        placeholder_catalog()
    });
    // Upgrades must never lower a limit.
    for pair in Tier::ALL.windows(2) {
        let (lo, hi) = (catalog.get(pair[0]), catalog.get(pair[1]));
        if hi.max_connections < lo.max_connections {
            c.fail(
                format!("tiers.{}.max_connections", pair[1].as_str()),
                format!(
                    "must not be lower than tier {}'s ({})",
                    pair[0].as_str(),
                    lo.max_connections
                ),
            );
        }
    }

    let f = &raw.usage.factors;
    for name in f.keys() {
        if !["select", "insert", "update", "delete", "ddl", "other"].contains(&name.as_str()) {
            c.fail(
                format!("usage.factors.{name}"),
                "unknown statement kind; expected select, insert, update, delete, ddl or other",
            );
        }
    }
    let mut factor = |kind: &str| c.factor(&format!("usage.factors.{kind}"), f.get(kind));
    let factors = UsageFactors {
        select: factor("select"),
        insert: factor("insert"),
        update: factor("update"),
        delete: factor("delete"),
        ddl: factor("ddl"),
        other: factor("other"),
    };

    let settings = Settings {
        http,
        proxy,
        limits: LimitSettings {
            enforcement: Enforcement::parse(&raw.limits.enforcement).unwrap_or_else(|| {
                c.fail("limits.enforcement", "must be \"enforce\" or \"shadow\"");
                Enforcement::Enforce
            }),
            max_queue_delay: c.duration("limits.max_queue_delay", &raw.limits.max_queue_delay),
            central_below_qps: c.count("limits.central_below_qps", raw.limits.central_below_qps, 0),
            sync_interval: c.positive_duration("limits.sync_interval", &raw.limits.sync_interval),
            lease_ttl: c.positive_duration("limits.lease_ttl", &raw.limits.lease_ttl),
        },
        replica_id: replica_id(&raw.replica.id),
        store: StoreSettings {
            data_dir: PathBuf::from(raw.store.data_dir),
            mongodb,
        },
        redis,
        shutdown_deadline: c.positive_duration("shutdown.deadline", &raw.shutdown.deadline),
        lifecycle: LifecyclePolicy {
            downgrade_grace: c
                .duration("lifecycle.downgrade_grace", &raw.lifecycle.downgrade_grace),
            payment_failure_grace: c.duration(
                "lifecycle.payment_failure_grace",
                &raw.lifecycle.payment_failure_grace,
            ),
        },
        schedule: ScheduleSettings {
            tick_interval: c
                .positive_duration("lifecycle.tick_interval", &raw.lifecycle.tick_interval),
            allow_clock_override: raw.lifecycle.allow_clock_override,
        },
        tier_cache: TierCacheSettings {
            ttl: c.positive_duration("tier_cache.ttl", &raw.tier_cache.ttl),
            refresh_interval: c.positive_duration(
                "tier_cache.refresh_interval",
                &raw.tier_cache.refresh_interval,
            ),
        },
        stripe: StripeSettings {
            webhook_secret: Secret::new(raw.stripe.webhook_secret),
            prices: prices(&mut c, &raw.stripe.prices),
            api_key: Secret::new(raw.stripe.api_key),
            api_base: api_base(&mut c, &raw.stripe.api_base),
            request_timeout: c
                .positive_duration("stripe.request_timeout", &raw.stripe.request_timeout),
        },
        notifications: notifications(&mut c, &raw.notifications),
        usage: UsageSettings {
            enabled: raw.usage.enabled,
            flush_interval: c.positive_duration("usage.flush_interval", &raw.usage.flush_interval),
            max_pending_records: c.count(
                "usage.max_pending_records",
                raw.usage.max_pending_records,
                1,
            ) as usize,
            retry_max_backoff: c
                .positive_duration("usage.retry_max_backoff", &raw.usage.retry_max_backoff),
            warning_check_interval: c.duration(
                "usage.warning_check_interval",
                &raw.usage.warning_check_interval,
            ),
            factors,
        },
        billing: billing(&mut c, &raw.billing),
        calibration: calibration(&mut c, &raw.calibration, &raw.railway),
        scale_to_zero: scale_to_zero(&mut c, &raw.scale_to_zero, &raw.railway),
        catalog,
        log_json: match raw.log.format.as_str() {
            "json" => true,
            "text" => false,
            other => {
                c.fail(
                    "log.format",
                    format!("must be \"text\" or \"json\", got \"{other}\""),
                );
                false
            }
        },
        log_filter: raw.log.filter,
    };
    if c.problems.is_empty() {
        Ok(settings)
    } else {
        Err(c.problems)
    }
}

/// `[stripe.prices]`: price id or lookup key → tier.
fn prices(c: &mut Checker, raw: &std::collections::BTreeMap<String, String>) -> PriceMap {
    let mut entries = Vec::new();
    for (key, tier) in raw {
        match Tier::from_str(tier) {
            Ok(t) => entries.push((key.clone(), t)),
            Err(e) => c.fail(format!("stripe.prices.{key}"), e.to_string()),
        }
    }
    PriceMap::new(entries)
}

/// `stripe.api_base`: empty for Stripe's own API.
fn api_base(c: &mut Checker, raw: &str) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    let base = api_base_url(raw);
    if base.is_none() {
        c.fail(
            "stripe.api_base",
            format!("must be empty or an http:// or https:// URL without query, like \"http://127.0.0.1:12111\", got {raw:?}"),
        );
    }
    base
}

/// An http(s) base URL with a host and without query or fragment, given the
/// trailing slash async-stripe needs (it appends `v1/...` as written).
pub fn api_base_url(raw: &str) -> Option<String> {
    let rest = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))?;
    if rest.is_empty()
        || rest.starts_with('/')
        || raw.contains(['?', '#'])
        || raw.contains(char::is_whitespace)
    {
        return None;
    }
    Some(if raw.ends_with('/') {
        raw.to_owned()
    } else {
        format!("{raw}/")
    })
}

fn notifications(c: &mut Checker, raw: &super::raw::RawNotifications) -> NotificationSettings {
    let base = c.positive_duration("notifications.retry_base", &raw.retry_base);
    let max = c.positive_duration("notifications.retry_max", &raw.retry_max);
    if max < base {
        c.fail(
            "notifications.retry_max",
            "must not be shorter than notifications.retry_base",
        );
    }
    NotificationSettings {
        signing_secret: Secret::new(raw.signing_secret.clone()),
        max_attempts: c.count("notifications.max_attempts", raw.max_attempts, 1),
        backoff: Backoff { base, max },
    }
}

fn calibration(
    c: &mut Checker,
    raw: &super::raw::RawCalibration,
    railway: &super::raw::RawRailway,
) -> CalibrationSettings {
    let mut price = |key: &str, value: &str| match Decimal::from_str(value) {
        Ok(d) if d > Decimal::ZERO => d,
        _ => {
            c.fail(
                key,
                format!("must be a positive decimal string, got \"{value}\""),
            );
            Decimal::ONE
        }
    };
    let vcpu_minute_price = price("calibration.vcpu_minute_price", &raw.vcpu_minute_price);
    let gb_minute_price = price("calibration.gb_minute_price", &raw.gb_minute_price);
    let threshold = price("calibration.threshold", &raw.threshold);
    let railway_url = match railway.api_url.as_str() {
        "" => None,
        url if url.starts_with("https://") || url.starts_with("http://") => Some(url.to_owned()),
        _ => {
            c.fail("railway.api_url", "must be an http(s) URL");
            None
        }
    };
    if !railway.api_token.is_empty() && railway.project_id.is_empty() {
        c.fail("railway.project_id", "is required with railway.api_token");
    }
    CalibrationSettings {
        config: CalibrationConfig {
            vcpu_minute_price,
            gb_minute_price,
            threshold,
            settle_delay: c.duration("calibration.settle_delay", &raw.settle_delay),
        },
        interval: c.positive_duration("calibration.interval", &raw.interval),
        railway_token: Secret::new(railway.api_token.clone()),
        railway_project_id: railway.project_id.clone(),
        railway_url,
        railway_timeout: c.positive_duration("railway.request_timeout", &railway.request_timeout),
    }
}

fn billing(c: &mut Checker, raw: &super::raw::RawBilling) -> BillingSettings {
    let base = c.positive_duration("billing.retry_base", &raw.retry_base);
    let max = c.positive_duration("billing.retry_max", &raw.retry_max);
    if max < base {
        c.fail(
            "billing.retry_max",
            "must not be shorter than billing.retry_base",
        );
    }
    if raw.currency.len() != 3 || !raw.currency.bytes().all(|b| b.is_ascii_lowercase()) {
        c.fail(
            "billing.currency",
            format!(
                "must be a lowercase ISO 4217 code such as \"usd\", got \"{}\"",
                raw.currency
            ),
        );
    }
    if !(raw.upgrade_url.starts_with("https://") || raw.upgrade_url.starts_with("http://")) {
        c.fail("billing.upgrade_url", "must be an http(s) URL");
    }
    BillingSettings {
        config: BillingConfig {
            currency: raw.currency.clone(),
            settle_delay: c.duration("billing.settle_delay", &raw.settle_delay),
            lease: c.positive_duration("billing.lease", &raw.lease),
            retry: Backoff { base, max },
            free_soft_period: c.duration("billing.free_soft_period", &raw.free_soft_period),
            upgrade_url: raw.upgrade_url.clone(),
            mode: BillingMode::parse(&raw.mode).unwrap_or_else(|| {
                c.fail("billing.mode", "must be \"live\" or \"shadow\"");
                BillingMode::Live
            }),
        },
        interval: c.positive_duration("billing.interval", &raw.interval),
    }
}

/// The configured id (or `RAILWAY_REPLICA_ID`), else a random one.
fn scale_to_zero(
    c: &mut Checker,
    raw: &super::raw::RawScaleToZero,
    railway: &super::raw::RawRailway,
) -> ScaleToZeroSettings {
    let wake_deadline = c.positive_duration("scale_to_zero.wake_deadline", &raw.wake_deadline);
    let step_lease = c.positive_duration("scale_to_zero.step_lease", &raw.step_lease);
    // The coordinator's claim must outlive the wait of the clients it serves.
    if step_lease < wake_deadline {
        c.fail(
            "scale_to_zero.step_lease",
            "must not be shorter than scale_to_zero.wake_deadline",
        );
    }
    // A wake still running past the lease would be taken over by another
    // replica while it runs: the railway driver's limit is capped at it.
    let railway_wake_timeout = c
        .positive_duration("railway.wake_timeout", &railway.wake_timeout)
        .min(step_lease);
    ScaleToZeroSettings {
        config: dynabase_actors::scale_to_zero::ScaleConfig {
            enabled: raw.enabled,
            idle_after: c.positive_duration("scale_to_zero.idle_after", &raw.idle_after),
            wake_deadline,
            step_lease,
        },
        tick_interval: c.positive_duration("scale_to_zero.tick_interval", &raw.tick_interval),
        railway_poll_interval: c.positive_duration("railway.poll_interval", &railway.poll_interval),
        railway_wake_timeout,
    }
}

fn replica_id(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        return format!("replica-{}", std::process::id());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stands in for a catalog with a missing tier so validation can continue.
fn placeholder_catalog() -> TierCatalog {
    let tiers = Tier::ALL
        .into_iter()
        .map(|tier| TierLimits {
            tier,
            max_connections: 1,
            qps: None,
            burst: None,
            base_fee: None,
            included_vcpu_hours: None,
            overage_per_vcpu_hour: None,
            scale_to_zero: false,
            session: SessionSettings {
                statement_timeout: "0".into(),
                work_mem: "4MB".into(),
                temp_buffers: "8MB".into(),
            },
        })
        .collect();
    TierCatalog::new(tiers).unwrap_or_else(|_| unreachable!("all tiers present"))
}
