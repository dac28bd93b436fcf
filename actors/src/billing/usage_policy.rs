//! What an open period's usage does to an organization before any bill:
//!
//! - **FREE overage (DESIGN.md Q2).** The first check that finds a FREE org
//!   past its included vCPU-hours records when (`free_overage` on the org),
//!   and sends an upgrade prompt. Everything keeps working through the soft
//!   period; after it, new connections are refused (53400) until the org
//!   upgrades or the period ends. Live sessions are not cut.
//! - **Spend cap.** With a cap, notifications at 80% of it and when the
//!   projected cost crosses it; at the cap, `cap_reached` is recorded and
//!   the tenant actors apply the cap's action (refuse query cycles, or
//!   FREE's query rate) until the cap is raised or the period ends.
//!
//! The state lives on the organization record (compare-and-set, so
//! replicas agree and restarts keep it) and reaches every replica's tenant
//! actor through the registry's change announcement. Notifications are
//! keyed per org, period and kind, so each is sent once.

use rust_decimal::{Decimal, RoundingStrategy};

use super::BillingConfig;
use crate::{
    domain::{
        catalog::TierLimits,
        organization::Organization,
        records::Period,
        spend::{CapReached, FreeOverage},
        tier::Tier,
        time::UnixMillis,
    },
    lifecycle::notifier::{NotificationKind, Notifier, NotifierError},
    store::{Store, StoreError},
    tenant::TenantRegistry,
};

/// Why the policy could not be applied (the check is retried).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Notify(#[from] NotifierError),
}

/// Attempts at a compare-and-set before giving up until the next check.
const CAS_ATTEMPTS: usize = 3;

/// Everything the policy needs besides the org and its usage.
#[derive(Clone)]
pub struct UsagePolicy {
    pub config: BillingConfig,
    pub tenants: TenantRegistry,
    pub notifier: Notifier,
}

/// The overage cost of `used` vCPU-hours on `limits`, in cents (half up),
/// if the tier has an overage price and included hours.
pub fn overage_cost(limits: &TierLimits, used: Decimal) -> Option<Decimal> {
    let rate = limits.overage_per_vcpu_hour?;
    let included = limits.included_vcpu_hours?;
    Some(
        ((used - included).max(Decimal::ZERO) * rate)
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero),
    )
}

/// `used` so far extrapolated linearly to the end of the period.
pub fn projected(period: &Period, used: Decimal, now: UnixMillis) -> Decimal {
    let elapsed = (now.0 - period.start().0).max(1);
    let length = period.end().0 - period.start().0;
    if elapsed >= length {
        return used;
    }
    used * Decimal::from(length) / Decimal::from(elapsed)
}

impl UsagePolicy {
    /// Applies the policy for `org`'s `used` vCPU-hours in the open
    /// `period`. Returns whether later checks of this period still matter.
    pub async fn evaluate(
        &self,
        store: &dyn Store,
        limits: &TierLimits,
        org: &Organization,
        period: &Period,
        used: Decimal,
        now: UnixMillis,
    ) -> Result<bool, PolicyError> {
        if Period::containing(now) != *period {
            return Ok(false);
        }
        let mut watching = false;
        if org.tier == Tier::Free {
            if let Some(included) = limits.included_vcpu_hours {
                let flagged = org
                    .lifecycle
                    .free_overage
                    .as_ref()
                    .is_some_and(|f| &f.period == period);
                if used > included && !flagged {
                    self.start_free_overage(store, org, period, included, used, now)
                        .await?;
                } else if !flagged {
                    watching = true;
                }
            }
        }
        if let (Some(cap), Some(cost)) = (&org.lifecycle.spend_cap, overage_cost(limits, used)) {
            let reached = org
                .lifecycle
                .cap_reached
                .as_ref()
                .is_some_and(|r| &r.period == period);
            let key = |what: &str| format!("spend-cap:{}:{period}:{what}", org.id);
            if cost * Decimal::ONE_HUNDRED >= cap.amount * Decimal::from(80) {
                let message = format!(
                    "Organization {} has used {cost} of its {} spend cap for {period}.",
                    org.id, cap.amount
                );
                self.notify(org, message, key("80"), now).await?;
            }
            let projected_cost =
                overage_cost(limits, projected(period, used, now)).unwrap_or(Decimal::ZERO);
            if projected_cost >= cap.amount {
                let message = format!(
                    "Organization {}'s overage cost for {period} is projected at {projected_cost}, \
                     above its {} spend cap.",
                    org.id, cap.amount
                );
                self.notify(org, message, key("projected"), now).await?;
            }
            if cost >= cap.amount && !reached {
                self.reach_cap(store, org, period, now).await?;
                let message = format!(
                    "Organization {} reached its {} spend cap for {period}: {} until the cap is \
                     raised or the period ends.",
                    org.id,
                    cap.amount,
                    match cap.action {
                        crate::domain::spend::CapAction::Refuse => "query cycles are refused",
                        crate::domain::spend::CapAction::Throttle => "its query rate is FREE's",
                    }
                );
                self.notify(org, message, key("reached"), now).await?;
            } else if !reached {
                watching = true;
            }
        }
        Ok(watching)
    }

    async fn notify(
        &self,
        org: &Organization,
        message: String,
        key: String,
        now: UnixMillis,
    ) -> Result<(), PolicyError> {
        self.notifier
            .notify(org, NotificationKind::SpendCap, message, key, now)
            .await?;
        Ok(())
    }

    async fn start_free_overage(
        &self,
        store: &dyn Store,
        org: &Organization,
        period: &Period,
        included: Decimal,
        used: Decimal,
        now: UnixMillis,
    ) -> Result<(), PolicyError> {
        let state = FreeOverage {
            period: period.clone(),
            since: now,
            enforce_from: now.plus(self.config.free_soft_period),
        };
        let enforce_from = state.enforce_from;
        let changed = self
            .update(store, org, |o| {
                if o.lifecycle
                    .free_overage
                    .as_ref()
                    .is_some_and(|f| &f.period == period)
                {
                    return false;
                }
                o.lifecycle.free_overage = Some(state.clone());
                true
            })
            .await?;
        if let Some(updated) = changed {
            let message = format!(
                "Organization {} has used {} vCPU-hours in {period}, more than the {included} \
                 included in tier FREE. Everything keeps working until {}; after that new \
                 connections are refused until you upgrade or the period ends. Upgrade: {}",
                org.id,
                used.round_dp(6).normalize(),
                enforce_from.to_rfc3339(),
                self.config.upgrade_url
            );
            self.notifier
                .notify(
                    &updated,
                    NotificationKind::FreeOverage,
                    message,
                    format!("free-overage:{}:{period}", org.id),
                    now,
                )
                .await?;
            metrics::counter!("dynabase_free_overage_started_total").increment(1);
        }
        Ok(())
    }

    async fn reach_cap(
        &self,
        store: &dyn Store,
        org: &Organization,
        period: &Period,
        now: UnixMillis,
    ) -> Result<(), PolicyError> {
        let changed = self
            .update(store, org, |o| {
                if o.lifecycle
                    .cap_reached
                    .as_ref()
                    .is_some_and(|r| &r.period == period)
                {
                    return false;
                }
                o.lifecycle.cap_reached = Some(CapReached {
                    period: period.clone(),
                    at: now,
                });
                true
            })
            .await?;
        if changed.is_some() {
            metrics::counter!("dynabase_spend_caps_reached_total", "tier" => org.tier.as_str())
                .increment(1);
        }
        Ok(())
    }

    /// Reads the org, applies `change` and writes it back by
    /// compare-and-set; announces the change to every replica. `None` when
    /// `change` found nothing to do.
    async fn update(
        &self,
        store: &dyn Store,
        org: &Organization,
        change: impl Fn(&mut Organization) -> bool,
    ) -> Result<Option<Organization>, PolicyError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(mut current) = store.get_org(&org.id).await? else {
                return Ok(None);
            };
            let seen = current.updated_at;
            if !change(&mut current) {
                return Ok(None);
            }
            current.updated_at = UnixMillis(UnixMillis::now().0.max(seen.0 + 1));
            if store.update_org_if_unchanged(&current, seen).await? {
                if let Err(e) = self.tenants.publish_change(current.clone()).await {
                    tracing::warn!(org = %org.id, error = %e, "change announcement failed; retried in the background");
                }
                return Ok(Some(current));
            }
        }
        Err(
            StoreError::Unavailable(format!("organization {} kept changing; will retry", org.id))
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_is_linear_in_the_elapsed_share() {
        let nov = Period::parse("2026-11").unwrap();
        let tenth_day = nov.start().plus(std::time::Duration::from_secs(9 * 86_400));
        assert_eq!(
            projected(&nov, Decimal::from(3), tenth_day),
            Decimal::from(10)
        );
        assert_eq!(
            projected(&nov, Decimal::from(3), nov.end()),
            Decimal::from(3)
        );
    }
}
