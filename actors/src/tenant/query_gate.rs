//! `QueryGate`: the per-organization query-rate limit (GCRA, via `governor`)
//! that every session of the organization consults before a query cycle.
//!
//! The tenant actor creates the gate and replaces it when the tier changes;
//! sessions hold a [`SharedGate`] and see the replacement on their next
//! cycle. Checking is a few atomic operations, so the hot path sends no
//! message to the actor (see `docs/decisions.md`).

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use governor::{
    clock::{Clock, DefaultClock},
    DefaultDirectRateLimiter, Quota, RateLimiter,
};

use crate::domain::{catalog::TierLimits, org_id::OrgId, tier::Tier};

/// The handle sessions keep; the tenant actor swaps the gate inside.
pub type SharedGate = Arc<ArcSwap<QueryGate>>;

/// What a session should do with the cycle it is about to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateVerdict {
    Go,
    /// Not before this much time has passed.
    Wait(Duration),
}

/// A refused query cycle, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit of {limit} queries/s exceeded for organization {org} on tier {tier}")]
pub struct RateRefusal {
    pub org: String,
    pub tier: Tier,
    pub limit: u32,
    pub retry_after: Duration,
    /// The next tier up and its limit (`None` = unlimited), for the hint.
    pub next: Option<(Tier, Option<u32>)>,
}

#[derive(Debug)]
pub struct QueryGate {
    org: OrgId,
    tier: Tier,
    qps: Option<u32>,
    next: Option<(Tier, Option<u32>)>,
    /// `None` for unlimited tiers: nothing to check.
    limiter: Option<DefaultDirectRateLimiter>,
}

impl QueryGate {
    /// A gate for `limits`; `next` is the tier above, for refusal hints.
    pub fn new(org: OrgId, limits: &TierLimits, next: Option<&TierLimits>) -> Self {
        let limiter = limits.qps.and_then(NonZeroU32::new).map(|qps| {
            let burst = limits.burst.and_then(NonZeroU32::new).unwrap_or(qps);
            RateLimiter::direct(Quota::per_second(qps).allow_burst(burst))
        });
        Self {
            org,
            tier: limits.tier,
            qps: limits.qps,
            next: next.map(|n| (n.tier, n.qps)),
            limiter,
        }
    }

    /// A gate with a different local rate (a replica's share of the org's
    /// limit); messages still name the tier's limit.
    pub fn with_local_rate(&self, qps: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            org: self.org.clone(),
            tier: self.tier,
            qps: self.qps,
            next: self.next,
            limiter: Some(RateLimiter::direct(
                Quota::per_second(qps).allow_burst(burst),
            )),
        }
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    pub fn qps(&self) -> Option<u32> {
        self.qps
    }

    pub fn is_unlimited(&self) -> bool {
        self.limiter.is_none()
    }

    /// Takes one cycle's worth of quota, or says how long until one is free.
    pub fn check(&self) -> GateVerdict {
        let Some(limiter) = &self.limiter else {
            return GateVerdict::Go;
        };
        match limiter.check() {
            Ok(()) => GateVerdict::Go,
            Err(not_until) => {
                GateVerdict::Wait(not_until.wait_time_from(DefaultClock::default().now()))
            }
        }
    }

    pub fn refusal(&self, retry_after: Duration) -> RateRefusal {
        RateRefusal {
            org: self.org.to_string(),
            tier: self.tier,
            limit: self.qps.unwrap_or(0),
            retry_after,
            next: self.next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalog::SessionSettings;

    fn limits(tier: Tier, qps: Option<u32>) -> TierLimits {
        TierLimits {
            tier,
            max_connections: 5,
            qps,
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
        }
    }

    #[test]
    fn admits_a_burst_then_asks_to_wait() {
        let org = OrgId::parse("acme").unwrap();
        let gate = QueryGate::new(
            org,
            &limits(Tier::Free, Some(10)),
            Some(&limits(Tier::Starter, Some(50))),
        );
        for _ in 0..10 {
            assert_eq!(gate.check(), GateVerdict::Go);
        }
        let GateVerdict::Wait(wait) = gate.check() else {
            panic!("the 11th cycle in the same instant must wait")
        };
        assert!(wait <= Duration::from_millis(100));
        let refusal = gate.refusal(wait);
        assert_eq!(
            refusal.to_string(),
            "rate limit of 10 queries/s exceeded for organization acme on tier FREE"
        );
        assert_eq!(refusal.next, Some((Tier::Starter, Some(50))));
    }

    #[test]
    fn unlimited_tiers_never_wait() {
        let org = OrgId::parse("big").unwrap();
        let gate = QueryGate::new(org, &limits(Tier::Enterprise, None), None);
        assert!(gate.is_unlimited());
        for _ in 0..10_000 {
            assert_eq!(gate.check(), GateVerdict::Go);
        }
    }
}
