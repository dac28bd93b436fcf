//! `PlatformActors`: starts every long-lived actor under an actix `Supervisor`.
//!
//! Composition only: which actors exist and how they are wired. Each actor's
//! policy lives in its own module.

use std::sync::Arc;

use actix::{Addr, Supervisor};

use crate::{
    calibrator::Calibrator,
    domain::catalog::TierCatalog,
    rate_limiter::RateLimiter,
    store::Store,
    tenant::TenantRegistry,
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
    pub tenants: TenantRegistry,
}

impl PlatformActors {
    /// Starts the actors on the current actix arbiter.
    pub fn start(store: Arc<dyn Store>, catalog: Arc<TierCatalog>, usage: UsageConfig) -> Self {
        let (usage_store, usage_catalog) = (store.clone(), catalog.clone());
        Self {
            rate_limiter: Supervisor::start(|_| RateLimiter::default()),
            usage: Supervisor::start(move |_| {
                UsageAccumulator::new(usage_store, usage_catalog, usage)
            }),
            calibrator: Supervisor::start(|_| Calibrator::default()),
            webhooks: Supervisor::start(|_| WebhookHandler::default()),
            tenants: TenantRegistry::new(store, catalog),
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
