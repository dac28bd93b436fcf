//! The Stripe invoice-item adapter against Stripe's own stripe-mock (which
//! validates every request against Stripe's OpenAPI spec), through a
//! recording relay that also stands in for Stripe's failures.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::stripe_mock::{self, Fault, StripeRelay};
use dynabase::{adapters::stripe_billing::StripeInvoiceItems, settings::Secret};
use dynabase_actors::{
    billing::provider::{
        InvoiceItemRef, InvoiceItemRequest, InvoiceItems, ProviderError, ORG_KEY, PERIOD_KEY,
    },
    domain::{org_id::OrgId, records::Period},
};
use serde_json::Value;

const KEY: &str = "sk_test_51QsT0a8xK2mLq4ZrDynabaseTestKey";
const ITEMS: &str = "/v1/invoiceitems";

struct Mock {
    relay: StripeRelay,
    items: StripeInvoiceItems,
}

/// A relay in front of stripe-mock and the adapter pointed at it, or `None`
/// (test skipped) without stripe-mock.
async fn mock() -> Option<Mock> {
    mock_with_timeout(Duration::from_secs(10)).await
}

async fn mock_with_timeout(timeout: Duration) -> Option<Mock> {
    let upstream = stripe_mock::url()?;
    let relay = StripeRelay::start(&upstream).await;
    let items = StripeInvoiceItems::with_timeout(Secret::new(KEY), Some(&relay.url), timeout)
        .expect("adapter");
    Some(Mock { relay, items })
}

fn org() -> OrgId {
    OrgId::parse("acme").expect("org id")
}

fn period() -> Period {
    Period::parse("2026-09").expect("period")
}

fn request(subscription: Option<&str>) -> InvoiceItemRequest {
    let metadata = BTreeMap::from([
        (ORG_KEY.to_owned(), "acme".to_owned()),
        (PERIOD_KEY.to_owned(), "2026-09".to_owned()),
        ("overage_vcpu_hours".to_owned(), "10.283".to_owned()),
        ("rate".to_owned(), "0.12".to_owned()),
    ]);
    InvoiceItemRequest {
        org: org(),
        period: period(),
        customer_id: "cus_Tq3xK9wLmN2pQr".into(),
        subscription_id: subscription.map(Into::into),
        amount_minor: 1234,
        currency: "usd".into(),
        description: "Dynabase overage 2026-09: 10.283 vCPU-h at $0.12".into(),
        metadata,
        idempotency_key: "dynabase-overage-acme-2026-09".into(),
    }
}

#[tokio::test]
async fn create_sends_the_whole_request_and_stripe_mock_accepts_it() {
    let Some(m) = mock().await else { return };
    let created = m
        .items
        .create(&request(Some("sub_1QsT9k8xK2mLq4ZrTq2YwVhN")))
        .await
        .expect("stripe-mock accepts the request");
    assert!(created.id.starts_with("ii_"), "{created:?}");

    let sent = m.relay.requests();
    assert_eq!(sent.len(), 1, "sent once: {sent:?}");
    let r = &sent[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", ITEMS));
    assert_eq!(
        r.idempotency_key.as_deref(),
        Some("dynabase-overage-acme-2026-09")
    );
    assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY}")));
    for (key, value) in [
        ("customer", "cus_Tq3xK9wLmN2pQr"),
        ("amount", "1234"),
        ("currency", "usd"),
        ("subscription", "sub_1QsT9k8xK2mLq4ZrTq2YwVhN"),
        (
            "description",
            "Dynabase overage 2026-09: 10.283 vCPU-h at $0.12",
        ),
        ("metadata[dynabase_org]", "acme"),
        ("metadata[dynabase_period]", "2026-09"),
        ("metadata[overage_vcpu_hours]", "10.283"),
        ("metadata[rate]", "0.12"),
    ] {
        assert_eq!(r.field(key), Some(value), "{key} in {:?}", r.form);
    }
    assert_eq!(r.form.len(), 9, "nothing else is sent: {:?}", r.form);

    // Without a subscription the item waits for the customer's next invoice.
    m.items.create(&request(None)).await.expect("accepted");
    let second = &m.relay.requests()[1];
    assert_eq!(second.field("subscription"), None, "{:?}", second.form);
    assert_eq!(m.relay.creates(), 2);
}

#[tokio::test]
async fn find_ignores_items_without_our_metadata() {
    let Some(m) = mock().await else { return };
    // stripe-mock lists its fixture item, which carries no metadata.
    let found = m
        .items
        .find("cus_Tq3xK9wLmN2pQr", &org(), &period())
        .await
        .expect("list accepted");
    assert_eq!(found, None);
    let sent = m.relay.requests();
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", ITEMS));
    assert_eq!(r.param("customer"), Some("cus_Tq3xK9wLmN2pQr"));
    assert_eq!(r.param("limit"), Some("100"));
    // Only items created since the period began (2026-09-01T00:00:00Z).
    assert_eq!(r.param("created[gte]"), Some("1788220800"));
    assert_eq!(r.idempotency_key, None);
}

/// stripe-mock's own list of invoice items, as JSON to edit.
async fn stripe_mock_list() -> Value {
    let upstream = stripe_mock::url().expect("stripe-mock");
    common::client()
        .get(format!("{upstream}{ITEMS}?customer=cus_Tq3xK9wLmN2pQr"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("list JSON")
}

#[tokio::test]
async fn find_pages_on_and_matches_org_and_period() {
    let Some(m) = mock().await else { return };
    let list = stripe_mock_list().await;
    let item = |id: &str, metadata: Value, invoice: Value| {
        let mut item = list["data"][0].clone();
        item["id"] = id.into();
        item["metadata"] = metadata;
        item["invoice"] = invoice;
        item
    };
    let page = |items: Vec<Value>, has_more: bool| {
        let mut page = list.clone();
        page["data"] = Value::Array(items);
        page["has_more"] = has_more.into();
        Fault::Respond {
            status: 200,
            body: page.to_string(),
        }
    };
    let ours = serde_json::json!({ORG_KEY: "acme", PERIOD_KEY: "2026-09"});
    m.relay.fail_next(
        "GET",
        ITEMS,
        1,
        page(
            vec![
                item(
                    "ii_other_period",
                    serde_json::json!({ORG_KEY: "acme", PERIOD_KEY: "2026-08"}),
                    Value::Null,
                ),
                item(
                    "ii_other_org",
                    serde_json::json!({ORG_KEY: "globex", PERIOD_KEY: "2026-09"}),
                    Value::Null,
                ),
            ],
            true,
        ),
    );
    m.relay.fail_next(
        "GET",
        ITEMS,
        1,
        page(
            vec![item("ii_ours", ours, "in_1QsT9l8xK2mLq4ZrC0rPq8Uw".into())],
            false,
        ),
    );
    let found = m
        .items
        .find("cus_Tq3xK9wLmN2pQr", &org(), &period())
        .await
        .expect("found");
    assert_eq!(
        found,
        Some(InvoiceItemRef {
            id: "ii_ours".into(),
            invoice_id: Some("in_1QsT9l8xK2mLq4ZrC0rPq8Uw".into()),
        })
    );
    let sent = m.relay.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].param("starting_after"), None);
    assert_eq!(sent[1].param("starting_after"), Some("ii_other_org"));
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_transient_and_a_retry_sends_the_same_key() {
    let Some(m) = mock().await else { return };
    m.relay.fail_next("POST", ITEMS, 1, Fault::status(500));
    m.relay.fail_next("POST", ITEMS, 1, Fault::status(429));
    m.relay.fail_next("GET", ITEMS, 1, Fault::status(503));
    let req = request(Some("sub_1QsT9k8xK2mLq4ZrTq2YwVhN"));
    for expected in ["500", "429"] {
        match m.items.create(&req).await {
            Err(ProviderError::Transient(message)) => {
                assert!(message.contains(expected), "{message}")
            }
            other => panic!("{expected}: {other:?}"),
        }
    }
    assert!(matches!(
        m.items.find("cus_Tq3xK9wLmN2pQr", &org(), &period()).await,
        Err(ProviderError::Transient(_))
    ));
    m.items.create(&req).await.expect("third attempt passes");
    assert_eq!(m.relay.creates(), 3, "the adapter itself never retries");
    let keys: Vec<_> = m
        .relay
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys, vec![Some(req.idempotency_key.clone()); 3]);
}

#[tokio::test]
async fn a_bad_request_is_rejected_with_stripes_message() {
    let Some(m) = mock().await else { return };
    m.relay.fail_next("POST", ITEMS, 1, Fault::status(400));
    assert_eq!(
        m.items.create(&request(None)).await,
        Err(ProviderError::Rejected {
            status: 400,
            message: "No such customer: 'cus_x'".into()
        })
    );
    m.relay.fail_next(
        "GET",
        ITEMS,
        1,
        Fault::error(404, "invalid_request_error", "No such customer: 'cus_gone'"),
    );
    assert_eq!(
        m.items.find("cus_gone", &org(), &period()).await,
        Err(ProviderError::Rejected {
            status: 404,
            message: "No such customer: 'cus_gone'".into()
        })
    );
}

#[tokio::test]
async fn a_dropped_connection_or_no_answer_is_transient() {
    let Some(m) = mock_with_timeout(Duration::from_millis(500)).await else {
        return;
    };
    m.relay.fail_next("POST", ITEMS, 1, Fault::Drop);
    m.relay.fail_next("GET", ITEMS, 1, Fault::Drop);
    assert!(matches!(
        m.items.create(&request(None)).await,
        Err(ProviderError::Transient(_))
    ));
    assert!(matches!(
        m.items.find("cus_Tq3xK9wLmN2pQr", &org(), &period()).await,
        Err(ProviderError::Transient(_))
    ));
    m.relay.fail_next("POST", ITEMS, 1, Fault::Stall);
    let started = std::time::Instant::now();
    match m.items.create(&request(None)).await {
        Err(ProviderError::Transient(message)) => {
            assert!(message.contains("500ms"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(m.relay.creates(), 2, "one attempt each, no retries");
}

#[tokio::test]
async fn the_api_key_never_appears_in_an_error() {
    let Some(m) = mock().await else { return };
    // Even if an answer echoed the key, the error would not carry it.
    m.relay.fail_next(
        "POST",
        ITEMS,
        1,
        Fault::error(
            401,
            "invalid_request_error",
            &format!("Invalid API Key provided: {KEY}"),
        ),
    );
    m.relay.fail_next(
        "GET",
        ITEMS,
        1,
        Fault::error(500, "api_error", &format!("Bearer {KEY} failed")),
    );
    m.relay.fail_next("POST", ITEMS, 1, Fault::Drop);
    let mut errors = vec![
        m.items.create(&request(None)).await.expect_err("401"),
        m.items
            .find("cus_Tq3xK9wLmN2pQr", &org(), &period())
            .await
            .expect_err("500"),
        m.items.create(&request(None)).await.expect_err("dropped"),
    ];
    // Nothing listens there: a connection error.
    let unreachable =
        StripeInvoiceItems::new(Secret::new(KEY), Some("http://127.0.0.1:9")).expect("adapter");
    errors.push(
        unreachable
            .create(&request(None))
            .await
            .expect_err("nothing listens on port 9"),
    );
    assert!(matches!(
        errors[0],
        ProviderError::Rejected { status: 401, .. }
    ));
    for e in &errors {
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(KEY), "{shown}");
        assert!(!shown.contains("DynabaseTestKey"), "{shown}");
    }
}
