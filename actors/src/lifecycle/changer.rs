//! `TierChanger`: the one path by which the lifecycle changes an
//! organization — billing events, the scheduler and operators all use it.
//!
//! Every change is a compare-and-set on the store (the source of truth)
//! first; only then is it audited, applied to this replica's tenant actor,
//! announced to every replica (cache entry deleted, invalidation published)
//! and notified. The compare-and-set makes concurrent replicas applying the
//! same step harmless: the loser re-reads, sees the step done, and writes
//! nothing. `updated_at` only grows (at least by one millisecond per write),
//! which is what the compare-and-set and the actors' "newer record wins"
//! rule rely on.
//!
//! A crash between the store write and the audit entry loses the entry, never
//! the change (as in `org_admin`): an audit entry for a change that did not
//! happen would be worse.

use std::sync::Arc;

use crate::{
    domain::{
        catalog::LifecyclePolicy,
        org_id::OrgId,
        organization::{Organization, PendingTierChange},
        records::TierChange,
        tier::Tier,
        time::UnixMillis,
    },
    lifecycle::{
        notifier::{NotificationKind, Notifier, NotifierError},
        policy::{self, Decision, Mode},
    },
    store::{Store, StoreError},
    tenant::TenantRegistry,
};

/// Compare-and-set rounds before giving up on a contended organization.
const MAX_ROUNDS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("organization `{0}` not found")]
    NotFound(OrgId),
    #[error("organization `{0}` kept changing under concurrent writers; try again")]
    Contended(OrgId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Notify(#[from] NotifierError),
}

/// A requested tier.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    pub org: OrgId,
    pub target: Tier,
    pub mode: Mode,
    /// Who asks: `admin`, `stripe:<event id>`, `lifecycle`.
    pub source: String,
    pub reason: String,
    /// Makes the notifications of this request idempotent (a retried
    /// request records them once).
    pub key: String,
    /// Billing-provider ids to link the organization to, if any.
    pub link: Option<BillingLink>,
    pub now: UnixMillis,
}

/// Billing-provider ids of an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingLink {
    pub customer_id: String,
    pub subscription_id: Option<String>,
}

/// What a request or a scheduler step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Applied { from: Tier, to: Tier },
    Scheduled(PendingTierChange),
    Cancelled(PendingTierChange),
}

impl Outcome {
    /// One line for logs and job notes.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Unchanged => "no change".to_owned(),
            Outcome::Applied { from, to } => format!("tier {from} → {to}"),
            Outcome::Scheduled(p) => {
                format!("{} scheduled for {}", p.to, p.effective_at.to_rfc3339())
            }
            Outcome::Cancelled(p) => format!("pending change to {} cancelled", p.to),
        }
    }
}

/// Applies tier lifecycle changes (see the module docs).
#[derive(Clone)]
pub struct TierChanger {
    store: Arc<dyn Store>,
    registry: TenantRegistry,
    notifier: Notifier,
    policy: LifecyclePolicy,
}

impl TierChanger {
    pub fn new(
        store: Arc<dyn Store>,
        registry: TenantRegistry,
        notifier: Notifier,
        policy: LifecyclePolicy,
    ) -> Self {
        Self {
            store,
            registry,
            notifier,
            policy,
        }
    }

    pub fn policy(&self) -> &LifecyclePolicy {
        &self.policy
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Requests `req.target` for `req.org` under the upgrade/downgrade rules.
    pub async fn request(
        &self,
        req: ChangeRequest,
    ) -> Result<(Organization, Outcome), ChangeError> {
        let mut outcome = Outcome::Unchanged;
        let (before, after) = self
            .modify(&req.org, req.now, |org| {
                let linked = link(org, req.link.as_ref());
                outcome = match policy::decide(
                    org,
                    req.target,
                    req.mode,
                    &self.policy,
                    &req.reason,
                    req.now,
                ) {
                    Decision::NoChange => Outcome::Unchanged,
                    Decision::ApplyNow(to) => {
                        let from = org.tier;
                        org.tier = to;
                        org.pending_tier_change = None;
                        Outcome::Applied { from, to }
                    }
                    Decision::Schedule(p) => {
                        org.pending_tier_change = Some(p.clone());
                        Outcome::Scheduled(p)
                    }
                    Decision::CancelPending => match org.pending_tier_change.take() {
                        Some(p) => Outcome::Cancelled(p),
                        None => Outcome::Unchanged,
                    },
                };
                linked || outcome != Outcome::Unchanged
            })
            .await?;
        self.committed(
            &before,
            &after,
            &outcome,
            &req.source,
            &req.reason,
            &req.key,
            req.now,
        )
        .await?;
        Ok((after, outcome))
    }

    /// Applies what is due for `id` at `now`: a scheduled change whose time
    /// has come, or the move to FREE of an organization past due beyond the
    /// payment grace.
    pub async fn apply_due(
        &self,
        id: &OrgId,
        now: UnixMillis,
    ) -> Result<(Organization, Outcome), ChangeError> {
        let mut outcome = Outcome::Unchanged;
        let mut reason = String::new();
        let mut key = String::new();
        let (before, after) = self
            .modify(id, now, |org| {
                let from = org.tier;
                if let Some(deadline) =
                    policy::payment_deadline(org, &self.policy).filter(|d| *d <= now)
                {
                    reason = format!(
                        "payment failed on {} and was not made within the grace period",
                        org.lifecycle
                            .past_due_since
                            .unwrap_or(deadline)
                            .to_rfc3339()
                    );
                    key = format!("lifecycle:{id}:past-due:{}", deadline.0);
                    org.tier = Tier::Free;
                } else if let Some(p) = policy::due_change(org, now).cloned() {
                    reason = p.reason.clone();
                    key = format!("lifecycle:{id}:scheduled:{}", p.effective_at.0);
                    org.tier = p.to;
                } else {
                    outcome = Outcome::Unchanged;
                    return false;
                }
                org.pending_tier_change = None;
                outcome = Outcome::Applied { from, to: org.tier };
                true
            })
            .await?;
        self.committed(&before, &after, &outcome, "lifecycle", &reason, &key, now)
            .await?;
        Ok((after, outcome))
    }

    /// Marks `id` past due (first failure wins) or clears it; returns whether
    /// anything changed.
    pub async fn set_past_due(
        &self,
        id: &OrgId,
        past_due: bool,
        detail: &str,
        key: &str,
        now: UnixMillis,
    ) -> Result<(Organization, bool), ChangeError> {
        let (before, after) = self
            .modify(id, now, |org| {
                match (past_due, org.lifecycle.past_due_since) {
                    (true, None) => {
                        org.lifecycle.past_due_since = Some(now);
                        true
                    }
                    (false, Some(_)) => {
                        org.lifecycle.past_due_since = None;
                        true
                    }
                    _ => false,
                }
            })
            .await?;
        let changed = before.lifecycle.past_due_since != after.lifecycle.past_due_since;
        if changed {
            self.registry.publish_change(after.clone()).await.ok();
            let (kind, message) = match policy::payment_deadline(&after, &self.policy) {
                Some(deadline) => (
                    NotificationKind::PaymentFailed,
                    format!(
                        "Payment failed ({detail}). Tier {} moves to FREE on {} unless it is paid.",
                        after.tier,
                        deadline.to_rfc3339()
                    ),
                ),
                None if past_due => (
                    NotificationKind::PaymentFailed,
                    format!("Payment failed ({detail})."),
                ),
                None => (
                    NotificationKind::PaymentRecovered,
                    format!("Payment received ({detail}); the account is in good standing."),
                ),
            };
            self.notifier
                .notify(
                    &after,
                    kind,
                    message,
                    format!("{key}:{}", kind.as_str()),
                    now,
                )
                .await?;
        }
        Ok((after, changed))
    }

    /// Sets the organization's notification URL (`None` clears it).
    pub async fn set_notification_url(
        &self,
        id: &OrgId,
        url: Option<String>,
        now: UnixMillis,
    ) -> Result<Organization, ChangeError> {
        let (before, after) = self
            .modify(id, now, |org| {
                let changed = org.lifecycle.notification_url != url;
                org.lifecycle.notification_url = url.clone();
                changed
            })
            .await?;
        if before != after {
            self.registry.publish_change(after.clone()).await.ok();
        }
        Ok(after)
    }

    /// Read, change, compare-and-set; `edit` returns whether it changed
    /// anything (nothing is written otherwise). Returns (before, after).
    async fn modify(
        &self,
        id: &OrgId,
        now: UnixMillis,
        mut edit: impl FnMut(&mut Organization) -> bool,
    ) -> Result<(Organization, Organization), ChangeError> {
        for _ in 0..MAX_ROUNDS {
            let before = self
                .store
                .get_org(id)
                .await?
                .ok_or_else(|| ChangeError::NotFound(id.clone()))?;
            let mut after = before.clone();
            if !edit(&mut after) {
                return Ok((before.clone(), before));
            }
            after.updated_at = UnixMillis(now.0.max(before.updated_at.0.saturating_add(1)));
            match self
                .store
                .update_org_if_unchanged(&after, before.updated_at)
                .await
            {
                Ok(true) => return Ok((before, after)),
                Ok(false) => continue,
                Err(StoreError::NotFound(_)) => return Err(ChangeError::NotFound(id.clone())),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ChangeError::Contended(id.clone()))
    }

    /// After a successful write: audit, apply and announce, notify.
    #[allow(clippy::too_many_arguments)]
    async fn committed(
        &self,
        before: &Organization,
        after: &Organization,
        outcome: &Outcome,
        source: &str,
        reason: &str,
        key: &str,
        now: UnixMillis,
    ) -> Result<(), ChangeError> {
        if before == after {
            return Ok(());
        }
        if before.tier != after.tier {
            self.store
                .append_tier_change(&TierChange {
                    org: after.id.clone(),
                    from: before.tier,
                    to: after.tier,
                    source: source.to_owned(),
                    reason: reason.to_owned(),
                    at: now,
                })
                .await?;
            metrics::counter!("dynabase_tier_changes_total", "direction" => if after.tier > before.tier { "up" } else { "down" })
                .increment(1);
            tracing::info!(org = %after.id, from = %before.tier, to = %after.tier, source, reason, "tier changed");
        }
        // Announcing failures are retried in the background by the registry.
        self.registry.publish_change(after.clone()).await.ok();
        let note = match outcome {
            Outcome::Unchanged => None,
            Outcome::Applied { from, to } => Some((
                NotificationKind::TierChanged,
                format!("Tier changed from {from} to {to}: {reason}."),
            )),
            Outcome::Scheduled(p) => Some((
                NotificationKind::DowngradeScheduled,
                format!(
                    "Tier {} moves to {} on {}: {}.",
                    after.tier,
                    p.to,
                    p.effective_at.to_rfc3339(),
                    p.reason
                ),
            )),
            Outcome::Cancelled(p) => Some((
                NotificationKind::DowngradeCancelled,
                format!(
                    "The change to {} planned for {} is cancelled; tier {} stays.",
                    p.to,
                    p.effective_at.to_rfc3339(),
                    after.tier
                ),
            )),
        };
        if let Some((kind, message)) = note {
            self.notifier
                .notify(
                    after,
                    kind,
                    message,
                    format!("{key}:{}", kind.as_str()),
                    now,
                )
                .await?;
        }
        Ok(())
    }
}

/// Links `org` to billing ids; returns whether that changed it.
fn link(org: &mut Organization, link: Option<&BillingLink>) -> bool {
    let Some(link) = link else { return false };
    let mut changed = false;
    if org.stripe_customer_id.as_deref() != Some(link.customer_id.as_str()) {
        org.stripe_customer_id = Some(link.customer_id.clone());
        changed = true;
    }
    if let Some(sub) = &link.subscription_id {
        if org.stripe_subscription_id.as_deref() != Some(sub.as_str()) {
            org.stripe_subscription_id = Some(sub.clone());
            changed = true;
        }
    }
    changed
}
