//! Billing-provider events as the lifecycle understands them, independent of
//! the provider's own types (the Stripe adapter converts into these), and the
//! configured mapping from prices to tiers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::tier::Tier;

/// A verified event from the billing provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingEvent {
    /// The provider's event id (`evt_…`); unique per event, the same on
    /// every redelivery.
    pub id: String,
    /// The provider's event type, e.g. `customer.subscription.updated`.
    pub event_type: String,
    /// When the provider created the event, in seconds since the epoch;
    /// orders updates of one subscription.
    pub created: i64,
    pub kind: BillingEventKind,
}

/// Which lifecycle step a subscription event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionChange {
    Created,
    Updated,
    Deleted,
}

/// A price a subscription item is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceRef {
    pub id: String,
    pub lookup_key: Option<String>,
}

/// What happened, in the terms the lifecycle acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BillingEventKind {
    Subscription {
        change: SubscriptionChange,
        subscription_id: String,
        customer_id: String,
        /// The provider's status word (`active`, `trialing`, `past_due`,
        /// `canceled`, `unpaid`, `incomplete`, `incomplete_expired`, `paused`).
        status: String,
        prices: Vec<PriceRef>,
        /// An organization id from the subscription's metadata
        /// (`dynabase_org`), used when the customer is not linked yet.
        org_hint: Option<String>,
    },
    PaymentFailed {
        customer_id: String,
        invoice_id: Option<String>,
    },
    InvoicePaid {
        customer_id: String,
        invoice_id: Option<String>,
        /// The invoice items billed on the invoice (ids of the provider's
        /// items, `ii_…`), as far as the event lists its lines.
        #[serde(default)]
        invoice_items: Vec<String>,
    },
    /// An invoice was finalized: its invoice items are now billed on it.
    /// Changes no tier.
    InvoiceFinalized {
        customer_id: String,
        invoice_id: String,
        invoice_items: Vec<String>,
    },
    /// Any other event type: acknowledged and logged, nothing else.
    Other,
}

/// Whether a subscription event is current or older than one applied before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionOrder {
    /// Not older than any applied event of that subscription: apply it.
    Current,
    /// An event created later was applied already: ignore this one.
    Stale {
        applied_created: i64,
        applied_event_id: String,
    },
}

/// Provider price id or lookup key → tier, from configuration.
///
/// Keys are compared without regard to ASCII case: environment-variable
/// configuration arrives lowercased, while price ids carry capitals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceMap {
    by_key: BTreeMap<String, Tier>,
}

impl PriceMap {
    pub fn new(entries: impl IntoIterator<Item = (String, Tier)>) -> Self {
        Self {
            by_key: entries
                .into_iter()
                .map(|(k, t)| (k.to_ascii_lowercase(), t))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn get(&self, key: &str) -> Option<Tier> {
        self.by_key.get(&key.to_ascii_lowercase()).copied()
    }

    /// The highest tier any of the prices maps to (by id, then lookup key).
    pub fn tier_for(&self, prices: &[PriceRef]) -> Option<Tier> {
        prices
            .iter()
            .filter_map(|p| {
                self.get(&p.id)
                    .or_else(|| p.lookup_key.as_deref().and_then(|k| self.get(k)))
            })
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(id: &str, key: Option<&str>) -> PriceRef {
        PriceRef {
            id: id.into(),
            lookup_key: key.map(Into::into),
        }
    }

    #[test]
    fn prices_map_by_id_or_lookup_key_ignoring_case() {
        let map = PriceMap::new([
            ("price_1ProABC".to_owned(), Tier::Pro),
            ("starter_monthly".to_owned(), Tier::Starter),
        ]);
        assert_eq!(
            map.tier_for(&[price("PRICE_1proabc", None)]),
            Some(Tier::Pro)
        );
        assert_eq!(
            map.tier_for(&[price("price_other", Some("starter_monthly"))]),
            Some(Tier::Starter)
        );
        assert_eq!(
            map.tier_for(&[
                price("price_other", Some("starter_monthly")),
                price("price_1ProABC", None)
            ]),
            Some(Tier::Pro),
            "the highest tier of all items wins"
        );
        assert_eq!(map.tier_for(&[price("price_unknown", None)]), None);
    }

    #[test]
    fn events_round_trip_as_job_payloads() {
        let event = BillingEvent {
            id: "evt_1".into(),
            event_type: "invoice.payment_failed".into(),
            created: 1_700_000_000,
            kind: BillingEventKind::PaymentFailed {
                customer_id: "cus_1".into(),
                invoice_id: Some("in_1".into()),
            },
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<BillingEvent>(&json).unwrap(), event);
    }
}
