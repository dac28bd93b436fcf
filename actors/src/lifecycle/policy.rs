//! The upgrade and downgrade rules, as pure functions of an organization, a
//! requested tier and the time (passed in, so tests choose it).
//!
//! - An upgrade applies at once and cancels a pending downgrade.
//! - A downgrade is scheduled `downgrade_grace` later; the current tier stays
//!   until then. Asking again for a downgrade already pending keeps the
//!   original date (a redelivered or repeated request must not extend the
//!   grace); asking for a different lower tier keeps the date too.
//! - Asking for the current tier cancels a pending downgrade.
//! - A past-due organization moves to FREE once `payment_failure_grace` has
//!   passed since the first failed payment.

use std::time::Duration;

use crate::domain::{
    catalog::LifecyclePolicy,
    organization::{Organization, PendingTierChange},
    tier::Tier,
    time::UnixMillis,
};

impl Default for LifecyclePolicy {
    fn default() -> Self {
        const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
        Self {
            downgrade_grace: WEEK,
            payment_failure_grace: WEEK,
        }
    }
}

/// What to do with a requested tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Already there, nothing pending: nothing to write.
    NoChange,
    /// Move to this tier now and drop any pending change.
    ApplyNow(Tier),
    /// Keep the tier; change later.
    Schedule(PendingTierChange),
    /// Keep the tier; drop the pending change.
    CancelPending,
}

/// How a requested tier is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Upgrades now, downgrades after the grace period (billing events).
    Graced,
    /// Now, in either direction (an operator's manual change).
    Immediate,
}

/// Decides what requesting `target` for `org` at `now` means.
pub fn decide(
    org: &Organization,
    target: Tier,
    mode: Mode,
    policy: &LifecyclePolicy,
    reason: &str,
    now: UnixMillis,
) -> Decision {
    let pending = org.pending_tier_change.as_ref();
    if target == org.tier {
        return if pending.is_some() {
            Decision::CancelPending
        } else {
            Decision::NoChange
        };
    }
    if target > org.tier || mode == Mode::Immediate || policy.downgrade_grace.is_zero() {
        return Decision::ApplyNow(target);
    }
    match pending {
        Some(p) if p.to == target => Decision::NoChange,
        Some(p) => Decision::Schedule(PendingTierChange {
            to: target,
            effective_at: p.effective_at,
            reason: reason.to_owned(),
        }),
        None => Decision::Schedule(PendingTierChange {
            to: target,
            effective_at: now.plus(policy.downgrade_grace),
            reason: reason.to_owned(),
        }),
    }
}

/// The scheduled change of `org` that is due at `now`, if any.
pub fn due_change(org: &Organization, now: UnixMillis) -> Option<&PendingTierChange> {
    org.pending_tier_change
        .as_ref()
        .filter(|p| p.effective_at <= now)
}

/// When a past-due organization moves to FREE, if it is past due and above it.
pub fn payment_deadline(org: &Organization, policy: &LifecyclePolicy) -> Option<UnixMillis> {
    let since = org.lifecycle.past_due_since?;
    (org.tier > Tier::Free).then(|| since.plus(policy.payment_failure_grace))
}

/// Whether the lifecycle has something to do for `org` at `now`.
pub fn needs_attention(org: &Organization, policy: &LifecyclePolicy, now: UnixMillis) -> bool {
    due_change(org, now).is_some() || payment_deadline(org, policy).is_some_and(|d| d <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        org_id::OrgId,
        organization::{LifecycleState, Upstream},
    };

    const DAY: i64 = 24 * 3600 * 1000;

    fn org(tier: Tier, pending: Option<(Tier, i64)>) -> Organization {
        Organization {
            id: OrgId::parse("acme").unwrap(),
            name: "Acme".into(),
            tier,
            upstream: Upstream::parse("db:5432").unwrap(),
            stripe_customer_id: None,
            stripe_subscription_id: None,
            pending_tier_change: pending.map(|(to, at)| PendingTierChange {
                to,
                effective_at: UnixMillis(at),
                reason: "earlier".into(),
            }),
            created_at: UnixMillis(0),
            updated_at: UnixMillis(0),
            lifecycle: LifecycleState::default(),
            compute: Default::default(),
        }
    }

    fn decide_at(o: &Organization, target: Tier, mode: Mode) -> Decision {
        decide(
            o,
            target,
            mode,
            &LifecyclePolicy::default(),
            "why",
            UnixMillis(DAY),
        )
    }

    #[test]
    fn upgrades_apply_now_and_cancel_pending_downgrades() {
        assert_eq!(
            decide_at(&org(Tier::Free, None), Tier::Pro, Mode::Graced),
            Decision::ApplyNow(Tier::Pro)
        );
        assert_eq!(
            decide_at(
                &org(Tier::Pro, Some((Tier::Free, 5 * DAY))),
                Tier::Enterprise,
                Mode::Graced
            ),
            Decision::ApplyNow(Tier::Enterprise)
        );
    }

    #[test]
    fn downgrades_wait_for_the_grace_period() {
        let Decision::Schedule(p) = decide_at(&org(Tier::Pro, None), Tier::Starter, Mode::Graced)
        else {
            panic!("scheduled")
        };
        assert_eq!((p.to, p.effective_at), (Tier::Starter, UnixMillis(8 * DAY)));
        // Asked again: the original date stands.
        let pending = org(Tier::Pro, Some((Tier::Starter, 3 * DAY)));
        assert_eq!(
            decide_at(&pending, Tier::Starter, Mode::Graced),
            Decision::NoChange
        );
        let Decision::Schedule(p) = decide_at(&pending, Tier::Free, Mode::Graced) else {
            panic!("rescheduled")
        };
        assert_eq!((p.to, p.effective_at), (Tier::Free, UnixMillis(3 * DAY)));
        // Back to the current tier: the downgrade is off.
        assert_eq!(
            decide_at(&pending, Tier::Pro, Mode::Graced),
            Decision::CancelPending
        );
        // An operator's change is immediate.
        assert_eq!(
            decide_at(&org(Tier::Pro, None), Tier::Free, Mode::Immediate),
            Decision::ApplyNow(Tier::Free)
        );
    }

    #[test]
    fn due_changes_and_payment_deadlines() {
        let pending = org(Tier::Pro, Some((Tier::Free, 3 * DAY)));
        assert!(due_change(&pending, UnixMillis(3 * DAY - 1)).is_none());
        assert!(due_change(&pending, UnixMillis(3 * DAY)).is_some());

        let policy = LifecyclePolicy::default();
        let mut late = org(Tier::Pro, None);
        assert_eq!(payment_deadline(&late, &policy), None);
        late.lifecycle.past_due_since = Some(UnixMillis(DAY));
        assert_eq!(payment_deadline(&late, &policy), Some(UnixMillis(8 * DAY)));
        assert!(!needs_attention(&late, &policy, UnixMillis(8 * DAY - 1)));
        assert!(needs_attention(&late, &policy, UnixMillis(8 * DAY)));
        late.tier = Tier::Free;
        assert_eq!(payment_deadline(&late, &policy), None, "already FREE");
    }
}
