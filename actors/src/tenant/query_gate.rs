//! `QueryGate`: the per-organization query-rate limit (GCRA, via `governor`)
//! that every session of the organization consults before a query cycle.
//!
//! The tenant actor creates the gate and replaces it when the tier changes;
//! sessions hold a [`SharedGate`] and see the replacement on their next
//! cycle. Checking is a few atomic operations, so the hot path sends no
//! message to the actor (see `docs/decisions.md`).

use std::{
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use governor::{clock::Clock, DefaultDirectRateLimiter, Quota, RateLimiter};

use super::enforcement::{Enforcement, EnforcementSwitch, ShadowCounts, ShadowModel};
use crate::{
    domain::{catalog::TierLimits, org_id::OrgId, tier::Tier},
    shared_limits::SharedLimits,
};

/// The handle sessions keep; the tenant actor swaps the gate inside.
pub type SharedGate = Arc<ArcSwap<QueryGate>>;

/// What a session should do with the cycle it is about to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateVerdict {
    Go,
    /// Not before this much time has passed.
    Wait(Duration),
    /// Ask the shared state ([`QueryGate::check_shared`]).
    AskShared,
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
    /// Set when the cycle was refused because the org reached its spend
    /// cap (the amount), not its rate.
    pub spend_cap: Option<rust_decimal::Decimal>,
}

/// How a gate enforces its limit.
enum Mode {
    /// No limit: nothing to check.
    Unlimited,
    /// Every cycle refused: the org reached its spend cap and the cap's
    /// action is to refuse.
    Capped(rust_decimal::Decimal),
    /// A local GCRA limiter: the whole limit (one replica) or this
    /// replica's share of it.
    Local(DefaultDirectRateLimiter),
    /// Every cycle is checked against the org-wide GCRA state in the shared
    /// store (small tiers, where local shares would be too coarse).
    Central {
        shared: Arc<dyn SharedLimits>,
        burst: u32,
        /// Nanoseconds after `epoch` before which the shared state already
        /// said no: refused locally without asking again.
        blocked_until: AtomicU64,
        epoch: Instant,
        /// Used while the shared store is unreachable.
        fallback: DefaultDirectRateLimiter,
    },
}

/// What a gate needs to run in shadow (see `enforcement`).
#[derive(Debug, Clone)]
pub struct ShadowHook {
    pub switch: EnforcementSwitch,
    /// The org's own mode, over the platform's.
    pub org_mode: Option<Enforcement>,
    pub counts: Arc<ShadowCounts>,
    pub model: Arc<ShadowModel>,
}

pub struct QueryGate {
    shadow: Option<ShadowHook>,
    /// Cycles that may be spent at once (the shadow model's burst).
    burst: u32,
    org: OrgId,
    tier: Tier,
    qps: Option<u32>,
    next: Option<(Tier, Option<u32>)>,
    mode: Mode,
    /// Cycles offered since the tenant actor last read it (demand).
    offered: AtomicU64,
}

impl std::fmt::Debug for QueryGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Unlimited => "unlimited",
            Mode::Capped(_) => "capped",
            Mode::Local(_) => "local",
            Mode::Central { .. } => "central",
        };
        f.debug_struct("QueryGate")
            .field("org", &self.org)
            .field("tier", &self.tier)
            .field("qps", &self.qps)
            .field("mode", &mode)
            .finish()
    }
}

fn limiter(per_second: f64, burst: u32) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(1.0 / per_second.max(0.001));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    RateLimiter::direct(quota)
}

impl QueryGate {
    /// A gate enforcing the whole of `limits` locally; `next` is the tier
    /// above, for refusal hints.
    pub fn new(org: OrgId, limits: &TierLimits, next: Option<&TierLimits>) -> Self {
        let mode = match limits.qps {
            None | Some(0) => Mode::Unlimited,
            Some(qps) => Mode::Local(limiter(f64::from(qps), burst_of(limits))),
        };
        Self::with_mode(org, limits, next, mode)
    }

    /// A gate refusing every cycle: the org reached its spend `cap`.
    pub fn capped(org: OrgId, limits: &TierLimits, cap: rust_decimal::Decimal) -> Self {
        Self::with_mode(org, limits, None, Mode::Capped(cap))
    }

    /// A gate enforcing `share` cycles/s of the org-wide limit on this
    /// replica (burst scaled alike). A replacement gate starts with its
    /// burst spent (`start_empty`), so re-sharing grants no extra burst.
    pub fn share(
        org: OrgId,
        limits: &TierLimits,
        next: Option<&TierLimits>,
        share: f64,
        start_empty: bool,
    ) -> Self {
        let mode = match limits.qps {
            None | Some(0) => Mode::Unlimited,
            Some(qps) => {
                let ratio = (share / f64::from(qps)).clamp(0.0, 1.0);
                let burst = ((f64::from(burst_of(limits)) * ratio).floor() as u32).max(1);
                let limiter = limiter(share, burst);
                if start_empty {
                    if let Some(n) = NonZeroU32::new(burst) {
                        let _ = limiter.check_n(n);
                    }
                }
                Mode::Local(limiter)
            }
        };
        Self::with_mode(org, limits, next, mode)
    }

    /// A gate checking every cycle against the shared store, falling back to
    /// `fallback_share` cycles/s locally while it is unreachable.
    pub fn central(
        org: OrgId,
        limits: &TierLimits,
        next: Option<&TierLimits>,
        shared: Arc<dyn SharedLimits>,
        fallback_share: f64,
    ) -> Self {
        let mode = match limits.qps {
            None | Some(0) => Mode::Unlimited,
            Some(qps) => {
                let ratio = (fallback_share / f64::from(qps)).clamp(0.0, 1.0);
                let fallback_burst = (f64::from(burst_of(limits)) * ratio).floor() as u32;
                Mode::Central {
                    shared,
                    burst: burst_of(limits),
                    blocked_until: AtomicU64::new(0),
                    epoch: Instant::now(),
                    fallback: limiter(fallback_share, fallback_burst),
                }
            }
        };
        Self::with_mode(org, limits, next, mode)
    }

    fn with_mode(org: OrgId, limits: &TierLimits, next: Option<&TierLimits>, mode: Mode) -> Self {
        Self {
            shadow: None,
            burst: burst_of(limits),
            org,
            tier: limits.tier,
            qps: limits.qps,
            next: next.map(|n| (n.tier, n.qps)),
            mode,
            offered: AtomicU64::new(0),
        }
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Runs in shadow when `hook` says so (switchable at any time).
    pub fn with_shadow(mut self, hook: ShadowHook) -> Self {
        self.shadow = Some(hook);
        self
    }

    /// Whether cycles are admitted and only counted (shadow enforcement).
    pub fn in_shadow(&self) -> bool {
        self.shadow
            .as_ref()
            .is_some_and(|h| h.org_mode.unwrap_or_else(|| h.switch.get()) == Enforcement::Shadow)
    }

    /// In shadow: counts the cycle if enforcement would have refused it.
    pub fn shadow_cycle(&self, max_queue_delay: Duration) {
        let Some(hook) = &self.shadow else { return };
        let refused = match (&self.mode, self.qps) {
            (Mode::Unlimited, _) | (_, None) | (_, Some(0)) => false,
            (Mode::Capped(_), _) => true,
            (_, Some(qps)) => hook.model.would_refuse(qps, self.burst, max_queue_delay),
        };
        if refused {
            hook.counts.query_cycles.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("dynabase_shadow_refusals_total", "tier" => self.tier.as_str(),
                "reason" => if matches!(self.mode, Mode::Capped(_)) { "spend_cap" } else { "rate_limit" })
            .increment(1);
        }
    }

    pub fn qps(&self) -> Option<u32> {
        self.qps
    }

    pub fn is_unlimited(&self) -> bool {
        matches!(self.mode, Mode::Unlimited)
    }

    /// Counts one offered cycle (the demand reported to the shared store).
    pub fn offer(&self) {
        self.offered.fetch_add(1, Ordering::Relaxed);
    }

    /// Cycles offered since the last call.
    pub fn take_offered(&self) -> u64 {
        self.offered.swap(0, Ordering::Relaxed)
    }

    /// Carries demand over from the gate this one replaces.
    pub fn add_offered(&self, n: u64) {
        self.offered.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes one cycle's worth of quota, says how long until one is free, or
    /// asks for the shared check.
    pub fn check(&self) -> GateVerdict {
        match &self.mode {
            Mode::Unlimited => GateVerdict::Go,
            // Longer than any queue delay: refused at once.
            Mode::Capped(_) => GateVerdict::Wait(Duration::from_secs(3600)),
            Mode::Local(limiter) => match limiter.check() {
                Ok(()) => GateVerdict::Go,
                Err(not_until) => {
                    GateVerdict::Wait(not_until.wait_time_from(limiter.clock().now()))
                }
            },
            Mode::Central {
                blocked_until,
                epoch,
                ..
            } => {
                let now = nanos_since(*epoch);
                let until = blocked_until.load(Ordering::Relaxed);
                if until > now {
                    GateVerdict::Wait(Duration::from_nanos(until - now))
                } else {
                    GateVerdict::AskShared
                }
            }
        }
    }

    /// The shared check for central gates (`Go` for the others). While the
    /// shared store is unreachable, the local fallback share decides.
    pub async fn check_shared(&self) -> GateVerdict {
        let Mode::Central {
            shared,
            burst,
            blocked_until,
            epoch,
            fallback,
        } = &self.mode
        else {
            return GateVerdict::Go;
        };
        let qps = self.qps.unwrap_or(1);
        let local = || match fallback.check() {
            Ok(()) => GateVerdict::Go,
            Err(not_until) => GateVerdict::Wait(not_until.wait_time_from(fallback.clock().now())),
        };
        if shared.health().degraded {
            return local();
        }
        match shared.take_query(&self.org, qps, *burst).await {
            Ok(None) => GateVerdict::Go,
            Ok(Some(wait)) => {
                let until = nanos_since(*epoch).saturating_add(wait.as_nanos() as u64);
                blocked_until.fetch_max(until, Ordering::Relaxed);
                GateVerdict::Wait(wait)
            }
            Err(e) => {
                shared.mark_degraded(&e);
                local()
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
            spend_cap: match self.mode {
                Mode::Capped(cap) => Some(cap),
                _ => None,
            },
        }
    }
}

fn burst_of(limits: &TierLimits) -> u32 {
    limits.burst.or(limits.qps).unwrap_or(1)
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
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
