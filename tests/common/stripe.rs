//! Stripe webhook requests for tests: event payloads built from the fixtures
//! in `tests/fixtures/stripe/` (shaped like Stripe's own events), signed the
//! way Stripe signs them — `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256
//! of "<t>.<payload>">` — computed here independently of the server's code.

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{admin_get, admin_send, client, Server};

pub const SECRET: &str = "whsec_test_7Yq2mVp9LcX4rTz8Bn3Kd6Wf";
/// Prices the test servers map to tiers (see [`env`]).
pub const STARTER_PRICE: &str = "price_1QsT6a8xK2mLq4ZrStrtMnth";
pub const PRO_PRICE: &str = "price_1QsT7f8xK2mLq4ZrPro0Mnth";
pub const ENTERPRISE_LOOKUP_KEY: &str = "dynabase_enterprise_annual";

/// Server environment: the signing secret, the price map, and a scheduler
/// clock that tests may move forward.
pub fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("STRIPE_WEBHOOK_SECRET", SECRET),
        (
            "DYNABASE__STRIPE__PRICES__PRICE_1QST6A8XK2MLQ4ZRSTRTMNTH",
            "starter",
        ),
        (
            "DYNABASE__STRIPE__PRICES__PRICE_1QST7F8XK2MLQ4ZRPRO0MNTH",
            "pro",
        ),
        (
            "DYNABASE__STRIPE__PRICES__DYNABASE_ENTERPRISE_ANNUAL",
            "enterprise",
        ),
        ("DYNABASE__LIFECYCLE__ALLOW_CLOCK_OVERRIDE", "true"),
        ("DYNABASE__LIFECYCLE__TICK_INTERVAL", "500ms"),
    ]
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stripe")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// What a subscription event says.
pub struct Sub<'a> {
    pub event_id: &'a str,
    pub kind: &'a str,
    pub created: i64,
    pub subscription: &'a str,
    pub customer: &'a str,
    pub price: &'a str,
    pub lookup_key: Option<&'a str>,
    pub status: &'a str,
    pub org: Option<&'a str>,
}

/// A `customer.subscription.<kind>` event.
pub fn subscription_event(s: &Sub<'_>) -> String {
    let mut e = fixture(&format!("customer.subscription.{}", s.kind));
    e["id"] = s.event_id.into();
    e["created"] = s.created.into();
    let o = &mut e["data"]["object"];
    o["id"] = s.subscription.into();
    o["customer"] = s.customer.into();
    o["status"] = s.status.into();
    o["metadata"] = match s.org {
        Some(org) => serde_json::json!({ "dynabase_org": org }),
        None => serde_json::json!({}),
    };
    let item = &mut o["items"]["data"][0];
    item["subscription"] = s.subscription.into();
    item["price"]["id"] = s.price.into();
    item["price"]["lookup_key"] = s.lookup_key.map_or(Value::Null, Into::into);
    item["plan"]["id"] = s.price.into();
    e.to_string()
}

/// An `invoice.payment_failed`, `invoice.paid` or `invoice.finalized` event.
pub fn invoice_event(kind: &str, event_id: &str, created: i64, customer: &str) -> String {
    let mut e = fixture(&format!("invoice.{kind}"));
    e["id"] = event_id.into();
    e["created"] = created.into();
    e["data"]["object"]["customer"] = customer.into();
    e.to_string()
}

/// Stripe's signature header for `payload` at `t` with `secret`.
pub fn sign(payload: &str, secret: &str, t: i64) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs `payload` to `/webhooks/stripe` with `signature` (if any).
pub async fn post(server: &Server, payload: &str, signature: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .post(server.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .body(payload.to_owned());
    if let Some(sig) = signature {
        req = req.header("Stripe-Signature", sig);
    }
    req.send().await.expect("webhook request")
}

/// POSTs `payload` signed now with the right secret; expects 200.
pub async fn deliver(server: &Server, payload: &str) -> Value {
    let r = post(server, payload, Some(&sign(payload, SECRET, now_secs()))).await;
    assert_eq!(r.status(), 200, "delivery refused");
    r.json().await.expect("JSON answer")
}

/// Creates an organization; `customer` links it to a Stripe customer.
pub async fn create_org(
    server: &Server,
    id: &str,
    tier: &str,
    upstream: &str,
    customer: Option<&str>,
) {
    let mut body = serde_json::json!({"id": id, "name": id, "tier": tier, "upstream": upstream});
    if let Some(c) = customer {
        body["stripe_customer_id"] = c.into();
    }
    let (status, answer) = admin_send(server, reqwest::Method::POST, "/admin/orgs", body).await;
    assert_eq!(status, 201, "{answer}");
}

/// Polls `GET /admin/orgs/{id}` until `check` holds (5 s at most).
pub async fn wait_for_org(server: &Server, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, org) = admin_get(server, &format!("/admin/orgs/{id}")).await;
        if check(&org) {
            return org;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "organization never matched: {org}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Polls the handling record of a Stripe event until it has left `pending`.
pub async fn wait_for_event(server: &Server, event_id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, event) = admin_get(server, &format!("/admin/stripe/events/{event_id}")).await;
        if status == 200 && event["status"] != "pending" {
            return event;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "event {event_id} still {event}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Runs the lifecycle scheduler at `now_ms`.
pub async fn tick(server: &Server, now_ms: i64) -> Value {
    let (status, report) = admin_send(
        server,
        reqwest::Method::POST,
        "/admin/lifecycle/tick",
        serde_json::json!({ "now": now_ms }),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    report
}
