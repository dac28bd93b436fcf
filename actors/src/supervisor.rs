//! `PlatformActors`: starts every long-lived actor under an actix `Supervisor`.
//!
//! Composition only: which actors exist and how they are wired. Each actor's
//! policy lives in its own module.

use std::{sync::Arc, time::Duration};

use actix::{Addr, Supervisor};
use async_trait::async_trait;

use crate::{
    billing::{
        provider::{InvoiceItems, NoInvoiceItems},
        runner::{BillingRunner, RunnerDeps},
        usage_policy::UsagePolicy,
        BillingConfig,
    },
    calibration::{
        source::{NoUsageSource, UsageSource},
        CalibrationConfig,
    },
    calibrator::{Calibrator, CalibratorDeps},
    domain::{
        billing::PriceMap,
        catalog::{LifecyclePolicy, TierCatalog},
        jobs::Backoff,
        time::UnixMillis,
    },
    lifecycle::{
        billing::BillingEffects,
        notifier::Notifier,
        scheduler::{LifecycleScheduler, SchedulerDeps},
        sender::{DeliveryError, NotificationSender},
        TierChanger,
    },
    rate_limiter::RateLimiter,
    store::Store,
    tenant::{enforcement::EnforcementSwitch, SharedPolicy, TenantRegistry},
    tier_cache::{NoTierCache, TierCache},
    usage_accumulator::{UsageAccumulator, UsageConfig},
    webhook_handler::WebhookHandler,
};

/// Addresses of the running actors. Cheap to clone.
#[derive(Clone)]
pub struct PlatformActors {
    pub rate_limiter: Addr<RateLimiter>,
    pub usage: Addr<UsageAccumulator>,
    pub calibrator: Addr<Calibrator>,
    pub webhooks: Addr<WebhookHandler>,
    /// Bills closed periods (schedule and on demand).
    pub billing: Addr<BillingRunner>,
    pub tenants: TenantRegistry,
    /// Applies `Tick { now }`: due downgrades, event retries, deliveries.
    pub lifecycle: Addr<LifecycleScheduler>,
    /// The one path for tier changes (operators use it too).
    pub changer: TierChanger,
}

/// Everything the actors are built from.
pub struct PlatformDeps {
    pub store: Arc<dyn Store>,
    pub catalog: Arc<TierCatalog>,
    pub tier_cache: Arc<dyn TierCache>,
    /// Limits shared with other replicas (Redis), if any.
    pub shared_limits: Option<SharedPolicy>,
    pub policy: LifecyclePolicy,
    pub prices: PriceMap,
    pub notification_sender: Arc<dyn NotificationSender>,
    pub notification_backoff: Backoff,
    pub notification_max_attempts: u32,
    pub usage: UsageConfig,
    pub billing: BillingConfig,
    /// The payment provider's invoice items (Stripe in the binary).
    pub invoice_items: Arc<dyn InvoiceItems>,
    pub calibration: CalibrationConfig,
    /// What Railway measured (its API in the binary).
    pub usage_source: Arc<dyn UsageSource>,
    /// Shadow or enforce (`limits.enforcement`), switchable at run time.
    pub enforcement: EnforcementSwitch,
}

impl PlatformDeps {
    /// No shared cache, default lifecycle timings, no prices, no outbound
    /// notifications.
    pub fn new(store: Arc<dyn Store>, catalog: Arc<TierCatalog>, usage: UsageConfig) -> Self {
        Self {
            store,
            catalog,
            usage,
            tier_cache: Arc::new(NoTierCache),
            shared_limits: None,
            policy: LifecyclePolicy::default(),
            prices: PriceMap::default(),
            notification_sender: Arc::new(NoNotificationSender),
            notification_backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(3600),
            },
            notification_max_attempts: 25,
            billing: BillingConfig::default(),
            invoice_items: Arc::new(NoInvoiceItems),
            calibration: CalibrationConfig::default(),
            usage_source: Arc::new(NoUsageSource),
            enforcement: EnforcementSwitch::default(),
        }
    }
}

/// Stands in when outbound notifications are not configured.
pub struct NoNotificationSender;

#[async_trait]
impl NotificationSender for NoNotificationSender {
    async fn send(&self, _: &str, _: &str, _: UnixMillis) -> Result<(), DeliveryError> {
        Err(DeliveryError::BadUrl(
            "outbound notifications are not configured".to_owned(),
        ))
    }
}

impl PlatformActors {
    /// Starts the actors on the current actix arbiter, with defaults for
    /// everything but the store and the catalog.
    pub fn start(store: Arc<dyn Store>, catalog: Arc<TierCatalog>, usage: UsageConfig) -> Self {
        Self::start_with(PlatformDeps::new(store, catalog, usage))
    }

    /// Starts the actors on the current actix arbiter.
    pub fn start_with(deps: PlatformDeps) -> Self {
        let (usage_store, usage_catalog, usage) =
            (deps.store.clone(), deps.catalog.clone(), deps.usage);
        let mut tenants = TenantRegistry::new(deps.store.clone(), deps.catalog.clone())
            .with_tier_cache(deps.tier_cache)
            .with_upgrade_url(&deps.billing.upgrade_url)
            .with_enforcement(deps.enforcement.clone());
        if let Some(policy) = deps.shared_limits {
            tenants = tenants.with_shared_limits(policy);
        }
        let notifier = Notifier::new(
            deps.store.clone(),
            deps.notification_backoff,
            deps.notification_max_attempts,
        );
        let changer = TierChanger::new(
            deps.store.clone(),
            tenants.clone(),
            notifier.clone(),
            deps.policy,
        );
        let policy = UsagePolicy {
            config: deps.billing.clone(),
            tenants: tenants.clone(),
            notifier: notifier.clone(),
        };
        let runner_deps = Arc::new(RunnerDeps {
            store: deps.store.clone(),
            catalog: deps.catalog.clone(),
            provider: deps.invoice_items,
            config: deps.billing,
            notifier: notifier.clone(),
        });
        let calibrator_deps = Arc::new(CalibratorDeps {
            store: deps.store.clone(),
            source: deps.usage_source,
            config: deps.calibration,
        });
        let effects = BillingEffects::new(changer.clone(), deps.prices);
        let store = deps.store.clone();
        let webhooks = Supervisor::start(move |_| WebhookHandler::new(store, effects));
        let scheduler_deps = SchedulerDeps {
            changer: changer.clone(),
            notifier,
            sender: deps.notification_sender,
            webhooks: webhooks.clone(),
        };
        Self {
            rate_limiter: Supervisor::start(|_| RateLimiter::default()),
            usage: Supervisor::start(move |_| {
                UsageAccumulator::new(usage_store, usage_catalog, usage).with_policy(policy)
            }),
            calibrator: Supervisor::start(move |_| Calibrator::new(calibrator_deps)),
            billing: Supervisor::start(move |_| BillingRunner::new(runner_deps)),
            webhooks,
            tenants,
            lifecycle: Supervisor::start(move |_| LifecycleScheduler::new(scheduler_deps)),
            changer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ping::{InjectFault, Ping};

    #[actix::test]
    async fn a_failed_actor_is_restarted_and_answers_the_next_message() {
        let addr = Supervisor::start(|_| RateLimiter::default());
        assert_eq!(addr.send(Ping).await.unwrap().restarts, 0);

        addr.do_send(InjectFault);
        let pong = addr.send(Ping).await.expect("restarted actor answers");
        assert_eq!(pong.restarts, 1);
        assert_eq!(pong.actor, "rate_limiter");

        // Every service actor is supervised the same way.
        let usage = Supervisor::start(|_| crate::usage_accumulator::tests::accumulator().0);
        usage.do_send(InjectFault);
        assert_eq!(usage.send(Ping).await.unwrap().restarts, 1);
    }
}
