//! Pushing one `computed` billing record to the payment provider, so that
//! however often it is tried — by two replicas at once, again after a crash
//! between the provider's answer and the store write, again after the
//! provider forgot its idempotency keys — the customer gets one item.
//!
//! 1. **Claim** attempt n of the record (`<key>#<n>`, a unique insert): the
//!    replica that wins moves the record's `next_attempt_at` to now +
//!    lease; the others leave it alone. A claim whose holder died before
//!    finishing is taken over once its lease has ended, by a successor
//!    claim named after it (`<claim>><lease end>`), again unique.
//! 2. **Look up** an item on the customer whose metadata names this org and
//!    period; if there is one (an earlier attempt created it), adopt it.
//! 3. **Create** it otherwise, with the record's idempotency key.
//! 4. **Record** the outcome by compare-and-set: `pushed` with the item id;
//!    on a transient error (or the provider refusing our own credentials)
//!    `computed` again with a backoff; on a refusal `failed` with the
//!    reason.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    billing::{
        provider::{InvoiceItemRequest, InvoiceItems, ProviderError, ORG_KEY, PERIOD_KEY},
        BillingConfig,
    },
    domain::{
        billing_record::{BillingRecord, BillingState},
        time::UnixMillis,
    },
    store::{Claim, Store, StoreError},
};

/// How a push attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Another replica holds the record, or it changed: not ours to push.
    NotClaimed,
    /// A new item was created.
    Created,
    /// An item from an earlier attempt was found and adopted.
    FoundExisting,
    /// Transient failure: tried again after the backoff.
    Retrying,
    /// The provider refused the item.
    Failed,
}

/// The provider request for a record.
pub fn request_for(record: &BillingRecord) -> Option<InvoiceItemRequest> {
    let c = &record.charge;
    let customer_id = record.customer_id.clone()?;
    let rate = c.rate?;
    let mut metadata = BTreeMap::from([
        (ORG_KEY.to_owned(), record.org.to_string()),
        (PERIOD_KEY.to_owned(), record.period.to_string()),
        ("tier".to_owned(), c.tier.to_string()),
        (
            "total_vcpu_hours".to_owned(),
            c.total_vcpu_hours.to_string(),
        ),
        (
            "included_vcpu_hours".to_owned(),
            c.included_vcpu_hours.normalize().to_string(),
        ),
        (
            "overage_vcpu_hours".to_owned(),
            c.overage_vcpu_hours.to_string(),
        ),
        ("rate_per_vcpu_hour".to_owned(), rate.to_string()),
    ]);
    if let Some(cap) = c.spend_cap.filter(|_| c.amount < c.uncapped_amount) {
        metadata.insert("spend_cap".to_owned(), cap.to_string());
        metadata.insert("uncapped_amount".to_owned(), c.uncapped_amount.to_string());
    }
    let capped = if c.amount < c.uncapped_amount {
        format!(", capped at {} {}", c.amount, c.currency.to_uppercase())
    } else {
        String::new()
    };
    Some(InvoiceItemRequest {
        org: record.org.clone(),
        period: record.period.clone(),
        customer_id,
        subscription_id: record.subscription_id.clone(),
        amount_minor: c.amount_minor(),
        currency: c.currency.clone(),
        description: format!(
            "Dynabase usage {} ({}): {} vCPU-hours, {} included, {} over at {}/vCPU-hour{capped}",
            record.period,
            c.tier,
            c.total_vcpu_hours,
            c.included_vcpu_hours.normalize(),
            c.overage_vcpu_hours,
            rate
        ),
        metadata,
        idempotency_key: record.idempotency_key(),
    })
}

/// The next `updated_at`: now, but always later than the last one.
fn bump(seen: UnixMillis, now: UnixMillis) -> UnixMillis {
    UnixMillis(now.0.max(seen.0 + 1))
}

/// Runs steps 1–4 for `record`.
pub async fn push(
    store: &Arc<dyn Store>,
    provider: &dyn InvoiceItems,
    config: &BillingConfig,
    record: BillingRecord,
    now: UnixMillis,
) -> Result<PushOutcome, StoreError> {
    if record.state != BillingState::Computed || record.next_attempt_at > now || record.shadow {
        return Ok(PushOutcome::NotClaimed);
    }
    if !take_claim(store.as_ref(), &record, now, now.plus(config.lease)).await? {
        return Ok(PushOutcome::NotClaimed);
    }
    let mut claimed = record.clone();
    claimed.attempts = record.attempts.saturating_add(1);
    claimed.next_attempt_at = now.plus(config.lease);
    claimed.updated_at = bump(record.updated_at, now);
    if !store
        .update_billing_record_if_unchanged(&claimed, record.updated_at)
        .await?
    {
        return Ok(PushOutcome::NotClaimed);
    }
    let mut done = claimed.clone();
    done.updated_at = bump(claimed.updated_at, now);
    let outcome = match request_for(&claimed) {
        None => {
            // No customer or no rate: nothing a provider could take.
            done.state = BillingState::Failed;
            done.last_error = Some("the record has no customer or no rate".to_owned());
            PushOutcome::Failed
        }
        Some(request) => match attempt(provider, &request).await {
            Ok((item, outcome)) => {
                done.state = BillingState::Pushed;
                done.provider_item_id = Some(item.id);
                done.provider_invoice_id = item.invoice_id;
                done.last_error = None;
                outcome
            }
            // Our credentials, not this customer: retry once they are fixed.
            Err(
                e @ ProviderError::Rejected {
                    status: 401 | 403, ..
                },
            ) => {
                tracing::error!(record = %claimed.key, error = %e, "the payment provider refused our credentials");
                done.next_attempt_at = now.plus(config.retry.after(claimed.attempts));
                done.last_error = Some(e.to_string());
                PushOutcome::Retrying
            }
            Err(ProviderError::Rejected { status, message }) => {
                done.state = BillingState::Failed;
                done.last_error = Some(format!("refused ({status}): {message}"));
                PushOutcome::Failed
            }
            Err(e) => {
                done.next_attempt_at = now.plus(config.retry.after(claimed.attempts));
                done.last_error = Some(e.to_string());
                PushOutcome::Retrying
            }
        },
    };
    if !store
        .update_billing_record_if_unchanged(&done, claimed.updated_at)
        .await?
    {
        // The lease ran out and another replica took over; it finds the
        // item we may have created by its metadata.
        tracing::warn!(record = %done.key, "billing record changed while pushing");
    }
    Ok(outcome)
}

/// Successor claims followed at most (each is a holder that died).
const MAX_TAKEOVERS: usize = 16;

/// Step 1: whether this replica now holds the record's next attempt.
async fn take_claim(
    store: &dyn Store,
    record: &BillingRecord,
    now: UnixMillis,
    until: UnixMillis,
) -> Result<bool, StoreError> {
    let mut name = format!(
        "billing:{}#{}",
        record.key,
        record.attempts.saturating_add(1)
    );
    for _ in 0..MAX_TAKEOVERS {
        match store.claim(&name, now, until).await? {
            Claim::Won => return Ok(true),
            Claim::Held(lease_end) if lease_end > now => return Ok(false),
            Claim::Held(lease_end) => name = format!("{name}>{}", lease_end.0),
        }
    }
    Ok(false)
}

async fn attempt(
    provider: &dyn InvoiceItems,
    request: &InvoiceItemRequest,
) -> Result<(super::provider::InvoiceItemRef, PushOutcome), ProviderError> {
    if let Some(item) = provider
        .find(&request.customer_id, &request.org, &request.period)
        .await?
    {
        return Ok((item, PushOutcome::FoundExisting));
    }
    let item = provider.create(request).await?;
    Ok((item, PushOutcome::Created))
}
