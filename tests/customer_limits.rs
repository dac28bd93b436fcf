//! The customer-facing HTTP routes are limited per organization: over the
//! tier's rate they answer 429 with `Retry-After`.

mod common;

use common::{client, Server, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn the_usage_api_answers_429_with_retry_after_over_the_tier_rate() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("DYNABASE__TIERS__FREE__QPS", "2"),
            ("DYNABASE__TIERS__FREE__BURST", "2"),
        ],
    );
    let http = client();
    for org in ["busy", "calm"] {
        let r = http
            .post(server.url("/admin/orgs"))
            .bearer_auth(ADMIN_TOKEN)
            .body(format!(
                r#"{{"id":"{org}","name":"{org}","tier":"free","upstream":"127.0.0.1:5432"}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let token = |org: &'static str| {
        let http = http.clone();
        let url = server.url(&format!("/admin/orgs/{org}/api-token"));
        async move {
            let body: Value = http
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["token"].as_str().expect("token issued").to_owned()
        }
    };
    let (busy, calm) = (token("busy").await, token("calm").await);

    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..5 {
        let r = http
            .get(server.url("/v1/usage"))
            .bearer_auth(&busy)
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS && limited.is_none() {
            limited = Some(r);
        }
    }
    assert_eq!(
        &statuses[..2],
        [StatusCode::OK, StatusCode::OK],
        "{statuses:?}"
    );
    let limited = limited.expect("a request over the rate is refused");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("organization busy on tier FREE"));

    // Another organization's budget is its own.
    let r = http
        .get(server.url("/v1/usage"))
        .bearer_auth(&calm)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
