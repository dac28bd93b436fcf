//! Shared by the billing suites: a server whose Stripe API is stripe-mock
//! behind a remembering relay, the period that is open now, and the calls
//! the suites make.
#![allow(dead_code)]

use std::{path::Path, time::Duration};

use dynabase_actors::{domain::records::Period, UnixMillis};
use serde_json::{json, Value};

use crate::common::{
    admin_get, admin_send, client, stripe as hooks,
    stripe_mock::{self, StripeRelay},
    Server, ADMIN_TOKEN,
};

/// The relay and what a server needs to use it, or `None` (skipped) when
/// stripe-mock is not running outside CI.
pub async fn relay() -> Option<StripeRelay> {
    let url = stripe_mock::url()?;
    Some(StripeRelay::start_remembering(&url).await)
}

/// Environment of a billing server: Stripe at the relay, a one-second
/// settle delay, clock override for billing closed periods "later".
pub fn env(relay: &StripeRelay) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = hooks::env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    env.extend(
        [
            ("STRIPE_API_KEY", "sk_test_BillingSuite5f2d"),
            ("DYNABASE__STRIPE__API_BASE", relay.url.as_str()),
            ("DYNABASE__BILLING__SETTLE_DELAY", "1s"),
            ("DYNABASE__BILLING__INTERVAL", "1h"),
            ("DYNABASE__BILLING__LEASE", "2s"),
            ("DYNABASE__BILLING__RETRY_BASE", "1s"),
            ("DYNABASE__BILLING__RETRY_MAX", "2s"),
            ("DYNABASE__USAGE__WARNING_CHECK_INTERVAL", "100ms"),
            ("DYNABASE__USAGE__FLUSH_INTERVAL", "200ms"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    env
}

pub fn start(data_dir: &Path, env: &[(String, String)]) -> Server {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start(data_dir, &pairs)
}

/// The period open now, and an instant after it has closed and settled.
pub fn this_period() -> (Period, i64) {
    let period = Period::containing(UnixMillis::now());
    let settled = period.end().0 + 2_000;
    (period, settled)
}

pub async fn create_org(server: &Server, id: &str, tier: &str, customer: Option<&str>) {
    hooks::create_org(server, id, tier, "127.0.0.1:5432", customer).await;
}

/// Adds `hours` vCPU-hours to the org's current period.
pub async fn add_hours(server: &Server, org: &str, hours: &str) {
    let (status, body) = admin_send(
        server,
        reqwest::Method::POST,
        &format!("/admin/orgs/{org}/usage/adjustments"),
        json!({ "vcpu_hours": hours, "reason": "test usage" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

/// `POST /admin/billing/run`; the status and the report.
pub async fn run(server: &Server, period: &Period, now_ms: i64) -> (u16, Value) {
    let r = client()
        .post(server.url(&format!("/admin/billing/run?period={period}&now={now_ms}")))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("run request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The org's billing record for `period`.
pub async fn record(server: &Server, org: &str, period: &Period) -> Value {
    let (status, body) = admin_get(server, &format!("/admin/orgs/{org}/billing")).await;
    assert_eq!(status, 200, "{body}");
    body["records"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["period"] == period.as_str()))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Issues the org's API token.
pub async fn token(server: &Server, org: &str) -> String {
    let (status, body) = admin_send(
        server,
        reqwest::Method::POST,
        &format!("/admin/orgs/{org}/api-token"),
        json!({}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_owned()
}
