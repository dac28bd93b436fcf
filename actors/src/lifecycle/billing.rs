//! What billing events do to organizations.
//!
//! - `customer.subscription.created/updated`: the subscription's prices map
//!   to a tier (configuration); upgrades apply now, downgrades are scheduled.
//!   A subscription that is `canceled`, `unpaid`, `incomplete_expired` or
//!   `paused` — and `customer.subscription.deleted` — means FREE (scheduled
//!   like any downgrade); `incomplete` (first payment pending) changes
//!   nothing yet. An event older than one already applied for the same
//!   subscription is ignored (Stripe does not guarantee delivery order).
//! - `invoice.payment_failed`: the organization is past due; the scheduler
//!   moves it to FREE after the payment grace.
//! - `invoice.paid`: past due no more.
//! - `invoice.finalized`: no tier change; the invoice items on it are
//!   reported (billing records will be confirmed from them).
//! - Anything else: acknowledged, recorded as ignored.
//!
//! The organization is the one linked to the event's customer, or else the
//! one named in the subscription's metadata (which links it).

use crate::{
    billing::confirm::confirm_items,
    domain::{
        billing::{
            BillingEvent, BillingEventKind, PriceMap, SubscriptionChange, SubscriptionOrder,
        },
        org_id::OrgId,
        organization::Organization,
        tier::Tier,
        time::UnixMillis,
    },
    lifecycle::{
        changer::{BillingLink, ChangeError, ChangeRequest, TierChanger},
        policy::Mode,
    },
    store::StoreError,
};

/// A failure worth retrying: the event's effect was not (fully) applied.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Change(#[from] ChangeError),
}

/// How an event ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventResult {
    /// The effect was applied (or was already in place); what it did.
    Applied(String),
    /// Deliberately not applied, and why.
    Ignored(String),
}

/// Applies billing events through the [`TierChanger`].
#[derive(Clone)]
pub struct BillingEffects {
    changer: TierChanger,
    prices: PriceMap,
}

impl BillingEffects {
    pub fn new(changer: TierChanger, prices: PriceMap) -> Self {
        Self { changer, prices }
    }

    pub async fn apply(
        &self,
        event: &BillingEvent,
        now: UnixMillis,
    ) -> Result<EventResult, BillingError> {
        let source = format!("stripe:{}", event.id);
        match &event.kind {
            BillingEventKind::Subscription {
                change,
                subscription_id,
                customer_id,
                status,
                prices,
                org_hint,
            } => {
                let Some(org) = self.resolve(customer_id, org_hint.as_deref()).await? else {
                    return Ok(EventResult::Ignored(format!(
                        "no organization is linked to customer {customer_id}"
                    )));
                };
                let store = self.changer.store();
                if let SubscriptionOrder::Stale {
                    applied_created,
                    applied_event_id,
                } = store
                    .record_subscription_event(subscription_id, event.created, &event.id)
                    .await?
                {
                    metrics::counter!("dynabase_stripe_events_out_of_order_total").increment(1);
                    return Ok(EventResult::Ignored(format!(
                        "older than {applied_event_id} (created {applied_created}), already applied to {subscription_id}"
                    )));
                }
                let target = match (change, status.as_str()) {
                    (SubscriptionChange::Deleted, _)
                    | (_, "canceled" | "unpaid" | "incomplete_expired" | "paused") => Tier::Free,
                    (_, "incomplete") => {
                        return Ok(EventResult::Ignored(
                            "subscription incomplete: its first payment is pending".to_owned(),
                        ))
                    }
                    _ => match self.prices.tier_for(prices) {
                        Some(tier) => tier,
                        None => {
                            tracing::warn!(event = %event.id, ?prices, "no configured price maps to a tier");
                            return Ok(EventResult::Ignored(format!(
                                "none of the prices {} is configured under [stripe.prices]",
                                prices
                                    .iter()
                                    .map(|p| p.id.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )));
                        }
                    },
                };
                let (_, outcome) = self
                    .changer
                    .request(ChangeRequest {
                        org: org.id.clone(),
                        target,
                        mode: Mode::Graced,
                        source: source.clone(),
                        reason: format!(
                            "Stripe subscription {subscription_id} is {status} ({})",
                            event.event_type
                        ),
                        key: source,
                        link: Some(BillingLink {
                            customer_id: customer_id.clone(),
                            subscription_id: Some(subscription_id.clone()),
                        }),
                        now,
                    })
                    .await?;
                Ok(EventResult::Applied(format!(
                    "{}: {}",
                    org.id,
                    outcome.describe()
                )))
            }
            BillingEventKind::PaymentFailed {
                customer_id,
                invoice_id,
            }
            | BillingEventKind::InvoicePaid {
                customer_id,
                invoice_id,
                ..
            } => {
                let failed = matches!(event.kind, BillingEventKind::PaymentFailed { .. });
                if let BillingEventKind::InvoicePaid { invoice_items, .. } = &event.kind {
                    confirm_items(
                        self.changer.store().as_ref(),
                        invoice_id.as_deref(),
                        invoice_items,
                        now,
                    )
                    .await?;
                }
                let Some(org) = self.resolve(customer_id, None).await? else {
                    return Ok(EventResult::Ignored(format!(
                        "no organization is linked to customer {customer_id}"
                    )));
                };
                let detail = format!("invoice {}", invoice_id.as_deref().unwrap_or("unknown"));
                let (_, changed) = self
                    .changer
                    .set_past_due(&org.id, failed, &detail, &source, now)
                    .await?;
                let what = match (failed, changed) {
                    (true, true) => "marked past due",
                    (true, false) => "already past due",
                    (false, true) => "past due cleared",
                    (false, false) => "was not past due",
                };
                Ok(EventResult::Applied(format!("{}: {what}", org.id)))
            }
            BillingEventKind::InvoiceFinalized {
                customer_id,
                invoice_id,
                invoice_items,
            } => {
                let confirmed = confirm_items(
                    self.changer.store().as_ref(),
                    Some(invoice_id),
                    invoice_items,
                    now,
                )
                .await?;
                Ok(self.invoice_finalized(customer_id, invoice_id, invoice_items, &confirmed))
            }
            BillingEventKind::Other => Ok(EventResult::Ignored(format!(
                "event type {} is not used",
                event.event_type
            ))),
        }
    }

    /// `invoice.finalized`: the invoice items on it are billed now, and the
    /// billing records of ours among them are confirmed. No tier changes.
    fn invoice_finalized(
        &self,
        customer_id: &str,
        invoice_id: &str,
        invoice_items: &[String],
        confirmed: &[String],
    ) -> EventResult {
        let items = if invoice_items.is_empty() {
            "no invoice items".to_owned()
        } else {
            format!(
                "{} invoice item(s): {}",
                invoice_items.len(),
                invoice_items.join(", ")
            )
        };
        EventResult::Applied(format!(
            "invoice {invoice_id} of customer {customer_id} finalized with {items}; billing records confirmed: {}",
            if confirmed.is_empty() { "none".to_owned() } else { confirmed.join(", ") }
        ))
    }

    /// The organization linked to `customer_id`, else the one `hint` names.
    async fn resolve(
        &self,
        customer_id: &str,
        hint: Option<&str>,
    ) -> Result<Option<Organization>, StoreError> {
        let store = self.changer.store();
        if let Some(org) = store.org_by_stripe_customer(customer_id).await? {
            return Ok(Some(org));
        }
        match hint.and_then(|h| OrgId::parse(h).ok()) {
            Some(id) => store.get_org(&id).await,
            None => Ok(None),
        }
    }
}
