//! Confirming billing records from the provider's invoice events: a record
//! whose invoice item is on an invoice that was finalized or paid moves
//! from `pushed` to `confirmed`. Idempotent: a record already confirmed,
//! and items that are not ours, are left alone.

use crate::{
    domain::{billing_record::BillingState, time::UnixMillis},
    store::{Store, StoreError},
};

/// Marks the records of `items` confirmed; returns their keys.
pub async fn confirm_items(
    store: &dyn Store,
    invoice_id: Option<&str>,
    items: &[String],
    now: UnixMillis,
) -> Result<Vec<String>, StoreError> {
    let mut confirmed = Vec::new();
    for item in items {
        let Some(record) = store.billing_record_by_item(item).await? else {
            continue;
        };
        if record.state != BillingState::Pushed {
            continue;
        }
        let mut next = record.clone();
        next.state = BillingState::Confirmed;
        if let Some(invoice) = invoice_id {
            next.provider_invoice_id = Some(invoice.to_owned());
        }
        next.updated_at = UnixMillis(now.0.max(record.updated_at.0 + 1));
        if store
            .update_billing_record_if_unchanged(&next, record.updated_at)
            .await?
        {
            metrics::counter!("dynabase_billing_records_total", "state" => "confirmed")
                .increment(1);
            confirmed.push(next.key);
        }
    }
    Ok(confirmed)
}
