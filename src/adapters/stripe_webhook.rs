//! Stripe webhooks: the `Stripe-Signature` check and the translation of
//! Stripe events into the lifecycle's provider-neutral [`BillingEvent`]s.
//!
//! Verification and parsing use async-stripe's webhook crate
//! (`stripe_webhook::Webhook::construct_event_with_timestamp`): HMAC-SHA256
//! of `"{t}.{raw body}"` with the endpoint's signing secret, compared with
//! every `v1` signature in the header, and a 300-second tolerance around the
//! time passed in. Subscription and invoice events come out typed.
//!
//! The crate checks the signature and the timestamp *before* it parses, so a
//! parse failure means an authentic event whose object the typed model does
//! not accept (a Stripe API version newer or older than the one the crate was
//! generated for). Such events are not refused — Stripe would retry them for
//! days and then drop them — but read again leniently from the JSON, taking
//! only the few fields the lifecycle needs.

use dynabase_actors::domain::billing::{
    BillingEvent, BillingEventKind, PriceRef, SubscriptionChange,
};
use serde_json::Value;
use stripe_webhook::{EventObject, Webhook, WebhookError};

use crate::settings::Secret;

/// The metadata key on a Stripe subscription naming the organization, for
/// customers not linked to one yet.
pub const ORG_METADATA_KEY: &str = "dynabase_org";

/// Why a webhook request was refused. Every variant means "no side effect".
#[derive(Debug, thiserror::Error)]
pub enum StripeWebhookError {
    #[error("the Stripe-Signature header is malformed")]
    BadHeader,
    #[error("no v1 signature matches the payload")]
    BadSignature,
    #[error("the signature timestamp {0} is outside the 300 s tolerance")]
    Stale(i64),
    #[error("the signing secret cannot be used")]
    BadSecret,
    #[error("the payload is not a Stripe event: {0}")]
    Unreadable(String),
}

/// Verifies Stripe webhook requests with the endpoint's signing secret.
#[derive(Clone)]
pub struct StripeWebhooks {
    secret: Secret,
}

impl std::fmt::Debug for StripeWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeWebhooks").finish_non_exhaustive()
    }
}

impl StripeWebhooks {
    pub fn new(secret: Secret) -> Self {
        Self { secret }
    }

    /// Verifies `signature` over `payload` at `now_secs` (Unix seconds) and
    /// translates the event.
    pub fn verify(
        &self,
        payload: &str,
        signature: &str,
        now_secs: i64,
    ) -> Result<BillingEvent, StripeWebhookError> {
        match Webhook::construct_event_with_timestamp(
            payload,
            signature,
            self.secret.expose(),
            now_secs,
        ) {
            Ok(event) => Ok(from_typed(event)),
            Err(WebhookError::BadParse(reason)) => {
                metrics::counter!("dynabase_stripe_events_lenient_total").increment(1);
                tracing::warn!(%reason, "typed Stripe event parse failed; reading the fields needed leniently");
                from_json(payload)
            }
            Err(WebhookError::BadHeader(_)) => Err(StripeWebhookError::BadHeader),
            Err(WebhookError::BadSignature) => Err(StripeWebhookError::BadSignature),
            Err(WebhookError::BadTimestamp(t)) => Err(StripeWebhookError::Stale(t)),
            Err(WebhookError::BadKey) => Err(StripeWebhookError::BadSecret),
        }
    }
}

fn from_typed(event: stripe_webhook::Event) -> BillingEvent {
    let kind = match event.data.object {
        EventObject::CustomerSubscriptionCreated(s) => {
            subscription(SubscriptionChange::Created, &s)
        }
        EventObject::CustomerSubscriptionUpdated(s) => {
            subscription(SubscriptionChange::Updated, &s)
        }
        EventObject::CustomerSubscriptionDeleted(s) => {
            subscription(SubscriptionChange::Deleted, &s)
        }
        EventObject::InvoicePaymentFailed(i) => match invoice_customer(&i) {
            Some(customer_id) => BillingEventKind::PaymentFailed {
                customer_id,
                invoice_id: i.id.as_ref().map(|id| id.as_str().to_owned()),
            },
            None => BillingEventKind::Other,
        },
        EventObject::InvoicePaid(i) => match invoice_customer(&i) {
            Some(customer_id) => BillingEventKind::InvoicePaid {
                customer_id,
                invoice_id: i.id.as_ref().map(|id| id.as_str().to_owned()),
                invoice_items: invoice_items(&i),
            },
            None => BillingEventKind::Other,
        },
        EventObject::InvoiceFinalized(i) => match (invoice_customer(&i), &i.id) {
            (Some(customer_id), Some(id)) => BillingEventKind::InvoiceFinalized {
                customer_id,
                invoice_id: id.as_str().to_owned(),
                invoice_items: invoice_items(&i),
            },
            _ => BillingEventKind::Other,
        },
        _ => BillingEventKind::Other,
    };
    BillingEvent {
        id: event.id.as_str().to_owned(),
        event_type: event.type_.as_str().to_owned(),
        created: event.created,
        kind,
    }
}

fn subscription(change: SubscriptionChange, s: &stripe_shared::Subscription) -> BillingEventKind {
    BillingEventKind::Subscription {
        change,
        subscription_id: s.id.as_str().to_owned(),
        customer_id: s.customer.id().as_str().to_owned(),
        status: s.status.as_str().to_owned(),
        prices: s
            .items
            .data
            .iter()
            .map(|item| PriceRef {
                id: item.price.id.as_str().to_owned(),
                lookup_key: item.price.lookup_key.clone(),
            })
            .collect(),
        org_hint: s.metadata.get(ORG_METADATA_KEY).cloned(),
    }
}

fn invoice_customer(i: &stripe_shared::Invoice) -> Option<String> {
    i.customer.as_ref().map(|c| c.id().as_str().to_owned())
}

/// The invoice items billed on the invoice, in line order, each once. A line
/// comes from an invoice item when its parent is `invoice_item_details`;
/// proration lines of a subscription item name theirs too. Stripe's event
/// carries the first page of lines only (`lines.has_more`).
fn invoice_items(i: &stripe_shared::Invoice) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    for line in &i.lines.data {
        let Some(parent) = &line.parent else { continue };
        let id = parent
            .invoice_item_details
            .as_ref()
            .map(|d| d.invoice_item.as_str())
            .or_else(|| {
                parent
                    .subscription_item_details
                    .as_ref()
                    .and_then(|d| d.invoice_item.as_deref())
            });
        if let Some(id) = id {
            if !items.iter().any(|seen| seen == id) {
                items.push(id.to_owned());
            }
        }
    }
    items
}

/// The same from the JSON, including the `invoice_item` field that lines
/// had at their top level before Stripe API version 2025-03-31.
fn json_invoice_items(invoice: &Value) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    let lines = invoice["lines"]["data"].as_array().map(Vec::as_slice);
    for line in lines.unwrap_or_default() {
        let parent = &line["parent"];
        let id = text(&parent["invoice_item_details"]["invoice_item"])
            .or_else(|| text(&parent["subscription_item_details"]["invoice_item"]))
            .or_else(|| text(&line["invoice_item"]))
            // An expanded item is an object with an id.
            .or_else(|| text(&line["invoice_item"]["id"]));
        if let Some(id) = id {
            if !items.contains(&id) {
                items.push(id);
            }
        }
    }
    items
}

/// Reads an authentic event whose object the typed model refused.
fn from_json(payload: &str) -> Result<BillingEvent, StripeWebhookError> {
    let unreadable = |what: &str| StripeWebhookError::Unreadable(what.to_owned());
    let event: Value =
        serde_json::from_str(payload).map_err(|e| StripeWebhookError::Unreadable(e.to_string()))?;
    let id = text(&event["id"]).ok_or_else(|| unreadable("no event id"))?;
    let event_type = text(&event["type"]).ok_or_else(|| unreadable("no event type"))?;
    let created = event["created"]
        .as_i64()
        .ok_or_else(|| unreadable("no creation time"))?;
    let object = &event["data"]["object"];
    let change = match event_type.as_str() {
        "customer.subscription.created" => Some(SubscriptionChange::Created),
        "customer.subscription.updated" => Some(SubscriptionChange::Updated),
        "customer.subscription.deleted" => Some(SubscriptionChange::Deleted),
        _ => None,
    };
    // An expanded customer is an object with an id; otherwise the id itself.
    let customer = text(&object["customer"]).or_else(|| text(&object["customer"]["id"]));
    let invoice_id = text(&object["id"]);
    let kind = match (change, event_type.as_str(), customer) {
        (Some(change), _, Some(customer_id)) => BillingEventKind::Subscription {
            change,
            subscription_id: text(&object["id"]).ok_or_else(|| unreadable("no subscription id"))?,
            customer_id,
            status: text(&object["status"]).ok_or_else(|| unreadable("no subscription status"))?,
            prices: object["items"]["data"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|item| {
                            Some(PriceRef {
                                id: text(&item["price"]["id"])?,
                                lookup_key: text(&item["price"]["lookup_key"]),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
            org_hint: text(&object["metadata"][ORG_METADATA_KEY]),
        },
        (None, "invoice.payment_failed", Some(customer_id)) => BillingEventKind::PaymentFailed {
            customer_id,
            invoice_id,
        },
        (None, "invoice.paid", Some(customer_id)) => BillingEventKind::InvoicePaid {
            customer_id,
            invoice_id,
            invoice_items: json_invoice_items(object),
        },
        (None, "invoice.finalized", Some(customer_id)) => match invoice_id {
            Some(invoice_id) => BillingEventKind::InvoiceFinalized {
                customer_id,
                invoice_id,
                invoice_items: json_invoice_items(object),
            },
            None => BillingEventKind::Other,
        },
        _ => BillingEventKind::Other,
    };
    Ok(BillingEvent {
        id,
        event_type,
        created,
        kind,
    })
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_unit_test_secret";

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/stripe/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn webhooks() -> StripeWebhooks {
        StripeWebhooks::new(Secret::new(SECRET))
    }

    #[test]
    fn fixtures_parse_typed_and_translate() {
        for name in [
            "customer.subscription.created",
            "customer.subscription.updated",
            "customer.subscription.deleted",
            "invoice.payment_failed",
            "invoice.paid",
            "invoice.finalized",
        ] {
            let payload = fixture(name);
            let now = 1_761_900_000;
            let header = Webhook::generate_test_header(&payload, SECRET, Some(now));
            // The typed path must accept our fixtures (they follow Stripe's shapes).
            Webhook::construct_event_with_timestamp(&payload, &header, SECRET, now)
                .unwrap_or_else(|e| panic!("{name} does not parse typed: {e}"));
            let event = webhooks().verify(&payload, &header, now).expect(name);
            assert_eq!(event.event_type, name);
            assert_ne!(event.kind, BillingEventKind::Other, "{name}");
            // The lenient reading agrees with the typed one.
            assert_eq!(from_json(&payload).expect(name), event, "{name}");
        }
        let updated = webhooks()
            .verify(
                &fixture("customer.subscription.updated"),
                &Webhook::generate_test_header(
                    &fixture("customer.subscription.updated"),
                    SECRET,
                    Some(1),
                ),
                1,
            )
            .unwrap();
        let BillingEventKind::Subscription {
            prices, org_hint, ..
        } = updated.kind
        else {
            panic!("subscription event")
        };
        assert_eq!(
            prices[0].lookup_key.as_deref(),
            Some("dynabase_pro_monthly")
        );
        assert_eq!(org_hint.as_deref(), Some("acme"));
    }

    #[test]
    fn forged_stale_and_malformed_signatures_are_refused() {
        let payload = fixture("invoice.paid");
        let now = 1_761_990_000;
        let good = Webhook::generate_test_header(&payload, SECRET, Some(now));
        let forged = Webhook::generate_test_header(&payload, "whsec_other", Some(now));
        assert!(matches!(
            webhooks().verify(&payload, &forged, now),
            Err(StripeWebhookError::BadSignature)
        ));
        assert!(matches!(
            webhooks().verify(&payload, &good, now + 301),
            Err(StripeWebhookError::Stale(_))
        ));
        assert!(webhooks().verify(&payload, &good, now + 300).is_ok());
        assert!(matches!(
            webhooks().verify(&payload, "t=abc,v1=00", now),
            Err(StripeWebhookError::BadHeader)
        ));
        // A rotated secret: any matching v1 passes.
        let other_v1 = forged.split_once(",v1=").map(|(_, s)| s).unwrap();
        let rotated = format!("{good},v1={other_v1}");
        assert!(webhooks().verify(&payload, &rotated, now).is_ok());
        // The body was changed after signing.
        let tampered = payload.replacen("\"paid\"", "\"void\"", 1);
        assert!(webhooks().verify(&tampered, &good, now).is_err());
    }

    #[test]
    fn unknown_types_and_unfamiliar_shapes_are_read() {
        let payload = fixture("product.created");
        let header = Webhook::generate_test_header(&payload, SECRET, Some(5));
        let event = webhooks().verify(&payload, &header, 5).unwrap();
        assert_eq!(event.kind, BillingEventKind::Other);

        // A subscription object missing fields the typed model requires.
        let lean = r#"{"id":"evt_lean","object":"event","api_version":"2099-01-01","created":7,
            "livemode":false,"pending_webhooks":1,"request":null,"type":"customer.subscription.updated",
            "data":{"object":{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active",
            "items":{"object":"list","data":[{"price":{"id":"price_1","lookup_key":null}}]},"metadata":{}}}}"#;
        let header = Webhook::generate_test_header(lean, SECRET, Some(9));
        let event = webhooks().verify(lean, &header, 9).unwrap();
        assert_eq!(
            event.kind,
            BillingEventKind::Subscription {
                change: SubscriptionChange::Updated,
                subscription_id: "sub_1".into(),
                customer_id: "cus_1".into(),
                status: "active".into(),
                prices: vec![PriceRef {
                    id: "price_1".into(),
                    lookup_key: None
                }],
                org_hint: None,
            }
        );
    }

    #[test]
    fn invoice_items_come_from_both_line_shapes() {
        // Current API: lines name their invoice item under parent.
        let payload = fixture("invoice.finalized");
        let header = Webhook::generate_test_header(&payload, SECRET, Some(3));
        let event = webhooks().verify(&payload, &header, 3).unwrap();
        assert_eq!(
            event.kind,
            BillingEventKind::InvoiceFinalized {
                customer_id: "cus_Tq3xK9wLmN2pQr".into(),
                invoice_id: "in_1QsT9l8xK2mLq4ZrC0rPq8Uw".into(),
                invoice_items: vec!["ii_1QsT8z8xK2mLq4ZrOvEr2609".into()],
            }
        );
        let paid = fixture("invoice.paid");
        let header = Webhook::generate_test_header(&paid, SECRET, Some(3));
        let BillingEventKind::InvoicePaid { invoice_items, .. } =
            webhooks().verify(&paid, &header, 3).unwrap().kind
        else {
            panic!("invoice.paid")
        };
        assert!(invoice_items.is_empty(), "only a subscription line");

        // Older API versions: `invoice_item` on the line itself (an id, or
        // an object when expanded), a shape the typed model refuses.
        for kind in ["invoice.finalized", "invoice.paid"] {
            let old = format!(
                r#"{{"id":"evt_old","object":"event","api_version":"2024-06-20","created":11,
                "livemode":false,"pending_webhooks":1,"request":null,"type":"{kind}",
                "data":{{"object":{{"id":"in_old","object":"invoice","customer":"cus_old",
                "lines":{{"object":"list","has_more":false,"data":[
                  {{"id":"il_1","type":"invoiceitem","invoice_item":"ii_a"}},
                  {{"id":"il_2","type":"subscription","invoice_item":null}},
                  {{"id":"il_3","type":"invoiceitem","invoice_item":{{"id":"ii_b"}}}},
                  {{"id":"il_4","type":"invoiceitem","invoice_item":"ii_a"}}]}}}}}}}}"#
            );
            let header = Webhook::generate_test_header(&old, SECRET, Some(12));
            let event = webhooks().verify(&old, &header, 12).unwrap();
            let items = match event.kind {
                BillingEventKind::InvoiceFinalized { invoice_items, .. }
                | BillingEventKind::InvoicePaid { invoice_items, .. } => invoice_items,
                other => panic!("{kind}: {other:?}"),
            };
            assert_eq!(items, ["ii_a", "ii_b"], "{kind}");
        }
        // The lenient reading of the current shape agrees with the typed one.
        assert_eq!(from_json(&payload).unwrap(), event_of(&payload));
    }

    fn event_of(payload: &str) -> BillingEvent {
        let header = Webhook::generate_test_header(payload, SECRET, Some(3));
        webhooks().verify(payload, &header, 3).unwrap()
    }
}
