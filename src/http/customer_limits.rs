//! Per-organization request limits for the customer-facing HTTP routes
//! (everything outside `/admin`, `/health`, `/ready`, `/metrics` and the
//! billing provider's webhooks): the tier's QPS, answered with 429 and
//! `Retry-After` when exceeded.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use dashmap::DashMap;
use dynabase_actors::{OrgId, Tier, TierCatalog};
use governor::{clock::Clock, DefaultDirectRateLimiter, Quota, RateLimiter};

use super::error::ApiError;

/// One limiter per organization and tier, created on first request.
pub struct CustomerLimits {
    catalog: Arc<TierCatalog>,
    limiters: DashMap<(OrgId, Tier), Arc<DefaultDirectRateLimiter>>,
}

impl CustomerLimits {
    pub fn new(catalog: Arc<TierCatalog>) -> Self {
        Self {
            catalog,
            limiters: DashMap::new(),
        }
    }

    /// Admits one request for `org` on `tier`, or says when to retry.
    pub fn check(&self, org: &OrgId, tier: Tier) -> Result<(), ApiError> {
        let limits = self.catalog.get(tier);
        let Some(qps) = limits.qps.and_then(NonZeroU32::new) else {
            return Ok(());
        };
        let burst = limits.burst.and_then(NonZeroU32::new).unwrap_or(qps);
        let limiter = self
            .limiters
            .entry((org.clone(), tier))
            .or_insert_with(|| {
                Arc::new(RateLimiter::direct(
                    Quota::per_second(qps).allow_burst(burst),
                ))
            })
            .clone();
        match limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                metrics::counter!("dynabase_http_rate_limited_total", "tier" => tier.as_str())
                    .increment(1);
                Err(ApiError::RateLimited {
                    retry_after: not_until.wait_time_from(limiter.clock().now()),
                    message: format!(
                        "request rate limit of {qps}/s exceeded for organization {org} on tier {tier}"
                    ),
                })
            }
        }
    }
}

/// Whole seconds for a `Retry-After` header (at least 1).
pub fn retry_after_header(wait: Duration) -> String {
    wait.as_secs_f64().ceil().max(1.0).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{load, LoadOptions};

    #[test]
    fn the_tiers_rate_then_429_with_a_retry_time() {
        let settings = load(&LoadOptions {
            config_dir: "/nonexistent".into(),
            env: Default::default(),
        })
        .unwrap();
        let limits = CustomerLimits::new(Arc::new(settings.catalog));
        let org = OrgId::parse("acme").unwrap();
        for _ in 0..10 {
            limits.check(&org, Tier::Free).unwrap();
        }
        let Err(ApiError::RateLimited {
            retry_after,
            message,
        }) = limits.check(&org, Tier::Free)
        else {
            panic!("the 11th request within a second is limited")
        };
        assert!(retry_after <= Duration::from_millis(100));
        assert!(message.contains("organization acme on tier FREE"));
        assert_eq!(retry_after_header(retry_after), "1");
        // Another organization has its own budget; unlimited tiers have none.
        limits
            .check(&OrgId::parse("other").unwrap(), Tier::Free)
            .unwrap();
        for _ in 0..1000 {
            limits.check(&org, Tier::Enterprise).unwrap();
        }
    }
}
