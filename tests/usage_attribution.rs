//! Usage attribution through the real binary, real PostgreSQL and (for
//! warnings across replicas) a real MongoDB-wire server: a known workload is
//! metered per org and database within a stated tolerance, orgs never see
//! each other's usage, API tokens and adjustments work, and the 80%/100%
//! warnings fire once each across replicas and restarts.

mod common;
mod usage_common;

use std::time::{Duration, Instant};

use common::{client, Server, ADMIN_TOKEN};
use dynabase::adapters::store::MongoStore;
use dynabase_actors::{OrgId, Store};
use futures_util::future::join_all;
use rust_decimal::Decimal;
use serde_json::Value;
use usage_common::{connect, create_org, dec, measured, pg, unique, wait_for_cycles, FLUSH};

/// Runs `sql` `n` times on one session; returns the client-side time spent.
async fn timed(c: &tokio_postgres::Client, sql: &str, n: usize) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        c.simple_query(sql).await.expect("query");
        spent += t.elapsed();
    }
    spent
}

async fn customer_usage(server: &Server, token: Option<&str>, query: &str) -> (u16, Value) {
    let mut req = client().get(server.url(&format!("/v1/usage{query}")));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("customer usage");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn issue_token(server: &Server, org: &str) -> String {
    let r = client()
        .post(server.url(&format!("/admin/orgs/{org}/api-token")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("issue token");
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.expect("token JSON");
    body["token"].as_str().expect("token").to_owned()
}

async fn adjust(server: &Server, org: &str, body: &str) -> (u16, Value) {
    let r = client()
        .post(server.url(&format!("/admin/orgs/{org}/usage/adjustments")))
        .bearer_auth(ADMIN_TOKEN)
        .body(body.to_owned())
        .send()
        .await
        .expect("adjust");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_known_workload_is_metered_per_org_and_database() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("DYNABASE__USAGE__FLUSH_INTERVAL", FLUSH)]);
    create_org(&server, "wl-a", "pro", &pg).await;
    create_org(&server, "wl-b", "starter", &pg).await;

    // Org A: 20 × pg_sleep(0.2) over four sessions, two databases.
    let sessions = join_all(
        ["postgres", "postgres", "template1", "template1"]
            .into_iter()
            .map(|db| connect(&server, "wl-a", db)),
    )
    .await;
    let spent_a: Duration = join_all(sessions.iter().map(|c| timed(c, "SELECT pg_sleep(0.2)", 5)))
        .await
        .into_iter()
        .sum();
    // Org B: DDL, 10 slow inserts (factor 1.2), 30 quick selects.
    let b = connect(&server, "wl-b", "postgres").await;
    let mut spent_b = timed(&b, "CREATE TEMP TABLE t (x int)", 1).await;
    spent_b += timed(&b, "INSERT INTO t SELECT 1 FROM pg_sleep(0.05)", 10).await;
    spent_b += timed(&b, "SELECT 1", 30).await;

    let a = wait_for_cycles(&server, "wl-a", 20, Duration::from_secs(5)).await;
    let (cycles, seconds, vcpu) = measured(&a);
    assert_eq!(cycles, 20, "every cycle once, and only org A's: {a}");
    // Tolerance: the proxy's time for a cycle lies between the server's
    // sleep and what the client waited for the answer.
    let client_seconds = Decimal::try_from(spent_a.as_secs_f64()).unwrap();
    eprintln!("org A: 20 × pg_sleep(0.2): recorded {seconds} s, {vcpu} vCPU-h; client waited {client_seconds} s");
    assert!(
        seconds >= Decimal::from(4) && seconds <= client_seconds,
        "recorded {seconds}s, slept 4s, client saw {client_seconds}s"
    );
    let hours = |s: Decimal| s / Decimal::from(3600);
    let tiny = Decimal::new(1, 15);
    assert!(
        (vcpu - hours(seconds)).abs() < tiny,
        "SELECT factors are 1 × 1: {vcpu} vs {seconds}s"
    );
    // GB-hours: PRO's work_mem is 64 MB.
    let gb = dec(&a["measured"]["gb_hours"]);
    assert!((gb - Decimal::from(64) / Decimal::from(1024) * hours(seconds)).abs() < tiny);
    let dbs: Vec<(&str, u64)> = a["by_database"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["database"].as_str().unwrap(),
                d["query_cycles"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(dbs, [("postgres", 10), ("template1", 10)]);
    let by_day: u64 = a["by_day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["query_cycles"].as_u64().unwrap())
        .sum();
    assert_eq!(by_day, 20);
    assert_eq!(a["included_vcpu_hours"], "200");
    assert_eq!(a["projected_overage_cost"], "0.00");

    let b_report = wait_for_cycles(&server, "wl-b", 41, Duration::from_secs(5)).await;
    let (cycles, seconds, vcpu) = measured(&b_report);
    assert_eq!(cycles, 41, "{b_report}");
    let client_seconds = Decimal::try_from(spent_b.as_secs_f64()).unwrap();
    assert!(seconds >= Decimal::new(5, 1) && seconds <= client_seconds);
    // Mostly inserts: the effective factor is close to 1.2.
    let factor = vcpu / hours(seconds);
    eprintln!("org B: recorded {seconds} s, {vcpu} vCPU-h (factor {factor}); client waited {client_seconds} s");
    assert!(
        factor > Decimal::new(110, 2) && factor < Decimal::new(125, 2),
        "effective factor {factor}"
    );

    // Customers read their own usage with their own token, and only that.
    let (token_a, token_b) = (
        issue_token(&server, "wl-a").await,
        issue_token(&server, "wl-b").await,
    );
    let (status, mine) = customer_usage(&server, Some(&token_a), "?org=wl-b").await;
    assert_eq!((status, &mine["org"]), (200, &Value::from("wl-a")));
    assert_eq!(mine["measured"], a["measured"]);
    let (status, theirs) = customer_usage(&server, Some(&token_b), "").await;
    assert_eq!(
        (status, theirs["measured"]["query_cycles"].as_u64()),
        (200, Some(41))
    );
    assert_eq!(customer_usage(&server, None, "").await.0, 401);
    let forged = token_a.replacen("dyn_wl-a_", "dyn_wl-b_", 1);
    assert_eq!(customer_usage(&server, Some(&forged), "").await.0, 401);
    assert_eq!(
        customer_usage(&server, Some(&token_a), "?period=2026-13")
            .await
            .0,
        422
    );
    // Rotation revokes the old token at once.
    let rotated = issue_token(&server, "wl-a").await;
    assert_eq!(customer_usage(&server, Some(&token_a), "").await.0, 401);
    assert_eq!(customer_usage(&server, Some(&rotated), "").await.0, 200);

    // An adjustment changes the totals, once per key.
    let body = r#"{"vcpu_hours":"1.5","reason":"migration replay","key":"adj-1"}"#;
    let (status, created) = adjust(&server, "wl-a", body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(adjust(&server, "wl-a", body).await.0, 200, "retry");
    assert_eq!(
        adjust(&server, "wl-a", r#"{"vcpu_hours":"x","reason":""}"#)
            .await
            .0,
        422
    );
    let after = usage_common::admin_usage(&server, "wl-a").await;
    assert_eq!(dec(&after["adjustments_vcpu_hours"]), Decimal::new(15, 1));
    assert_eq!(
        dec(&after["total_vcpu_hours"]),
        measured(&after).2 + Decimal::new(15, 1)
    );
    assert_eq!(after["adjustments"].as_array().map(Vec::len), Some(1));
    let b_after = usage_common::admin_usage(&server, "wl-b").await;
    assert_eq!(dec(&b_after["adjustments_vcpu_hours"]), Decimal::ZERO);
}

fn mongo_url() -> Option<String> {
    common::require_service("DYNABASE_TEST_MONGODB_URL", "mongodb://127.0.0.1:27017")
}

/// A replica on a shared MongoDB database.
fn replica(dir: &std::path::Path, url: &str, db: &str, id: &str) -> Server {
    Server::start(
        dir,
        &[
            ("DYNABASE__USAGE__FLUSH_INTERVAL", FLUSH),
            ("DYNABASE__USAGE__WARNING_CHECK_INTERVAL", "0s"),
            ("DYNABASE__REPLICA__ID", id),
            // FREE includes 0.0001 vCPU-hours (0.36 s) in this test.
            ("DYNABASE__TIERS__FREE__INCLUDED_VCPU_HOURS", "0.0001"),
            ("MONGODB_URL", url),
            ("DYNABASE__STORE__MONGODB_DATABASE", db),
        ],
    )
}

/// The keys of the org's notifications that start with `prefix`.
async fn notified(store: &MongoStore, org: &str, prefix: &str) -> Vec<String> {
    store
        .notifications_for_org(&OrgId::parse(org).unwrap())
        .await
        .expect("notifications")
        .into_iter()
        .map(|n| n.key)
        .filter(|k| k.starts_with(prefix))
        .collect()
}

/// The usage warnings (80%, 100%) recorded for the org.
async fn warnings(store: &MongoStore, org: &str) -> Vec<String> {
    notified(store, org, "usage:").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_warnings_fire_once_across_replicas_and_restarts() {
    let (Some(pg), Some(url)) = (pg(), mongo_url()) else {
        return;
    };
    let db = unique("dynabase_warn");
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let r1 = replica(d1.path(), &url, &db, "r1");
    let r2 = replica(d2.path(), &url, &db, "r2");
    create_org(&r1, "warn-a", "free", &pg).await;
    let store = MongoStore::connect(&url, &db).await.expect("mongo");

    // 0.3 s of 0.36: past 80% only.
    let c1 = connect(&r1, "warn-a", "postgres").await;
    c1.simple_query("SELECT pg_sleep(0.3)").await.unwrap();
    let report = wait_for_cycles(&r1, "warn-a", 1, Duration::from_secs(5)).await;
    let period = report["period"].as_str().unwrap().to_owned();
    let key = |t: u32| format!("usage:warn-a:{period}:{t}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while warnings(&store, "warn-a").await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(warnings(&store, "warn-a").await, [key(80)]);

    // Both replicas push it past 100%, at the same time.
    let c2 = connect(&r2, "warn-a", "postgres").await;
    let (x, y) = tokio::join!(
        c1.simple_query("SELECT pg_sleep(0.1)"),
        c2.simple_query("SELECT pg_sleep(0.1)")
    );
    x.unwrap();
    y.unwrap();
    wait_for_cycles(&r1, "warn-a", 3, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(warnings(&store, "warn-a").await, [key(80), key(100)]);

    // A restarted replica, more usage on both: still once each.
    drop(c1);
    assert!(r1.terminate(Duration::from_secs(10)).is_some());
    let r1 = replica(d1.path(), &url, &db, "r1");
    let c1 = connect(&r1, "warn-a", "postgres").await;
    c1.simple_query("SELECT pg_sleep(0.05)").await.unwrap();
    c2.simple_query("SELECT pg_sleep(0.05)").await.unwrap();
    wait_for_cycles(&r1, "warn-a", 5, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(warnings(&store, "warn-a").await, [key(80), key(100)]);
    let notes = store
        .notifications_for_org(&OrgId::parse("warn-a").unwrap())
        .await
        .unwrap();
    let hundred = notes.iter().find(|n| n.key == key(100)).expect("100%");
    assert!(
        hundred.message.contains("100% of the 0.0001 vCPU-hours"),
        "{}",
        hundred.message
    );
    // Past its included hours, the FREE org got one upgrade prompt.
    assert_eq!(
        notified(&store, "warn-a", "free-overage:").await,
        [format!("free-overage:warn-a:{period}")]
    );
    drop((r1, r2));
    store.database().drop().await.expect("drop test database");
}
