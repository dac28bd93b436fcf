//! FREE's overage policy and spend caps, end to end through the proxy: the
//! real binary, real PostgreSQL behind it, tokio-postgres in front.

mod common;

use std::time::Duration;

use common::{
    admin_get, admin_send, client,
    pg::{self, connect, connect_error, conninfo, eventually, unique_org},
    Server,
};
use serde_json::{json, Value};

const UPGRADE_URL: &str = "https://upgrade.example/dynabase";

fn start(dir: &std::path::Path) -> Server {
    Server::start(
        dir,
        &[
            // Two seconds stand for FREE's seven days.
            ("DYNABASE__BILLING__FREE_SOFT_PERIOD", "2s"),
            ("DYNABASE__BILLING__UPGRADE_URL", UPGRADE_URL),
            ("DYNABASE__USAGE__WARNING_CHECK_INTERVAL", "100ms"),
            ("DYNABASE__USAGE__FLUSH_INTERVAL", "200ms"),
            ("DYNABASE__TIER_CACHE__REFRESH_INTERVAL", "1s"),
        ],
    )
}

async fn add_hours(server: &Server, org: &str, hours: &str) {
    let (status, body) = admin_send(
        server,
        reqwest::Method::POST,
        &format!("/admin/orgs/{org}/usage/adjustments"),
        json!({ "vcpu_hours": hours, "reason": "test usage" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

async fn notification_kinds(server: &Server, org: &str) -> Vec<String> {
    let (_, notes) = admin_get(server, &format!("/admin/orgs/{org}/notifications")).await;
    notes
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|x| x["kind"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn billing_section(server: &Server, org: &str) -> Value {
    let (status, report) = admin_get(server, &format!("/admin/orgs/{org}/usage")).await;
    assert_eq!(status, 200, "{report}");
    report["billing"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_org_over_its_hours_is_refused_after_the_soft_period_until_it_upgrades() {
    let Some(upstream) = pg::pg_service() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path());
    let org = unique_org("free-over");
    pg::create_org(&server, &org, "free", &upstream).await;
    let (user, password) = pg::superuser();
    let info = conninfo(
        &server,
        &format!("{user}.{org}"),
        "postgres",
        Some(&password),
    );

    add_hours(&server, &org, "6").await;
    eventually(Duration::from_secs(10), "the upgrade prompt", || async {
        notification_kinds(&server, &org)
            .await
            .contains(&"free_overage".to_owned())
            .then_some(())
    })
    .await;
    let (_, notes) = admin_get(&server, &format!("/admin/orgs/{org}/notifications")).await;
    assert!(notes.to_string().contains(UPGRADE_URL), "{notes}");

    // The soft period: everything keeps working.
    let live = connect(&info).await;
    live.client.simple_query("SELECT 1").await.expect("query");
    let billing = billing_section(&server, &org).await;
    assert_eq!(billing["free_overage"]["state"], "soft_period", "{billing}");

    // "Day 8": new connections are refused with 53400 and the upgrade path.
    let refused = eventually(Duration::from_secs(10), "the forced upgrade", || async {
        match pg::try_connect(&info).await {
            Ok(_) => None,
            Err(e) => e.as_db_error().cloned(),
        }
    })
    .await;
    assert_eq!(refused.code().code(), "53400", "{refused:?}");
    assert!(
        refused.message().contains("included in tier FREE"),
        "{refused:?}"
    );
    assert!(
        refused.hint().is_some_and(|h| h.contains(UPGRADE_URL)),
        "{refused:?}"
    );
    // Live sessions are not cut.
    live.client
        .simple_query("SELECT 1")
        .await
        .expect("the live session still works");
    let billing = billing_section(&server, &org).await;
    assert_eq!(
        billing["free_overage"]["state"], "forced_upgrade",
        "{billing}"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("reason=\"forced_upgrade\""),
        "refusals are counted by reason"
    );

    // The state survives a restart.
    drop(live);
    drop(server);
    let server = start(dir.path());
    let info = conninfo(
        &server,
        &format!("{user}.{org}"),
        "postgres",
        Some(&password),
    );
    let again = connect_error(&info).await;
    assert_eq!(again.code().code(), "53400");

    // An upgrade admits the org again.
    let (status, body) = admin_send(
        &server,
        reqwest::Method::PUT,
        &format!("/admin/orgs/{org}/tier"),
        json!({ "tier": "starter", "reason": "upgraded after the prompt" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let s = connect(&info).await;
    s.client.simple_query("SELECT 1").await.expect("admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_cap_refuses_query_cycles_until_the_customer_raises_it() {
    let Some(upstream) = pg::pg_service() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path());
    let org = unique_org("capped");
    pg::create_org(&server, &org, "starter", &upstream).await;
    let (status, body) = admin_send(
        &server,
        reqwest::Method::POST,
        &format!("/admin/orgs/{org}/api-token"),
        json!({}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let set_cap = |amount: Value| {
        let (server, token) = (&server, token.clone());
        async move {
            let r = client()
                .put(server.url("/v1/spend-cap"))
                .bearer_auth(token)
                .json(&json!({ "amount": amount, "action": "refuse" }))
                .send()
                .await
                .expect("spend cap request");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = set_cap(json!("1.00")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spend_cap"]["set_by"], "customer");
    // Bad input is a clear 422, and changes nothing.
    let (status, body) = set_cap(json!("-3")).await;
    assert_eq!(status, 422, "{body}");

    let (user, password) = pg::superuser();
    let info = conninfo(
        &server,
        &format!("{user}.{org}"),
        "postgres",
        Some(&password),
    );
    let session = connect(&info).await;
    session
        .client
        .simple_query("SELECT 1")
        .await
        .expect("under the cap");

    // 40 h on STARTER: 15 h over × $0.15 = $2.25, past the $1.00 cap.
    add_hours(&server, &org, "40").await;
    let refused = eventually(Duration::from_secs(10), "the cap to apply", || async {
        match session.client.simple_query("SELECT 1").await {
            Ok(_) => None,
            Err(e) => e.as_db_error().cloned(),
        }
    })
    .await;
    assert_eq!(refused.code().code(), "53400", "{refused:?}");
    assert!(
        refused.message().contains("spend cap of 1.00"),
        "{refused:?}"
    );
    assert!(
        refused
            .hint()
            .is_some_and(|h| h.contains("Raise the spend cap")),
        "{refused:?}"
    );
    let kinds = notification_kinds(&server, &org).await;
    assert!(
        kinds.iter().filter(|k| *k == "spend_cap").count() >= 2,
        "80% and reached: {kinds:?}"
    );
    let billing = billing_section(&server, &org).await;
    assert_eq!(billing["spend_cap_reached"], true, "{billing}");
    assert_eq!(billing["charge"]["uncapped_amount"], "2.25", "{billing}");
    assert_eq!(
        billing["charge"]["amount"], "1.00",
        "the bill never exceeds the cap"
    );

    // Raising the cap lets the same session go on.
    let (status, _) = set_cap(json!("100.00")).await;
    assert_eq!(status, 200);
    eventually(
        Duration::from_secs(10),
        "the raised cap to apply",
        || async { session.client.simple_query("SELECT 1").await.ok().map(drop) },
    )
    .await;
    let billing = billing_section(&server, &org).await;
    assert_eq!(billing["spend_cap_reached"], false, "{billing}");
    assert_eq!(billing["charge"]["amount"], "2.25");
}
