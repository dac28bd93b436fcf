//! Helpers of the usage tests: organizations, sessions through the proxy,
//! workloads that count what the client saw, and reading usage reports.
#![allow(dead_code)]

use std::{
    str::FromStr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rust_decimal::Decimal;
use serde_json::Value;
use tokio_postgres::Client;

pub use crate::common::pg::{create_org, unique};
use crate::common::{
    client,
    pg::{conninfo, pg_service, trust_user},
    Server, ADMIN_TOKEN,
};

/// The PostgreSQL service (`host:port`), or `None`: test skipped.
pub fn pg() -> Option<String> {
    pg_service()
}

/// Flush interval used by the usage tests.
pub const FLUSH: &str = "200ms";

pub fn dec(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("decimal string, got {v}")),
    )
    .unwrap_or_else(|e| panic!("decimal {v}: {e}"))
}

/// A session of `trust_user.<org>` through the proxy.
pub async fn connect(server: &Server, org: &str, db: &str) -> Client {
    let user = format!("{}.{org}", trust_user());
    crate::common::pg::connect(&conninfo(server, &user, db, None))
        .await
        .client
}

/// `GET /admin/orgs/{org}/usage` (current period).
pub async fn admin_usage(server: &Server, org: &str) -> Value {
    let r = client()
        .get(server.url(&format!("/admin/orgs/{org}/usage")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("usage request");
    assert_eq!(r.status(), 200, "usage of {org}");
    r.json().await.expect("usage JSON")
}

/// Polls the admin report until `query_cycles` reaches `cycles` (or the
/// time is up); returns the last report.
pub async fn wait_for_cycles(server: &Server, org: &str, cycles: u64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let report = admin_usage(server, org).await;
        let seen = report["measured"]["query_cycles"].as_u64().unwrap_or(0);
        if seen >= cycles || Instant::now() >= deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a looping client saw: when each of its queries completed.
#[derive(Debug, Default)]
pub struct Seen {
    pub completed: Vec<Instant>,
    pub errors: u32,
}

/// Runs `sql` on `client` until `stop` is set or the session fails;
/// records each completion.
pub async fn run_until(
    client: Client,
    sql: &'static str,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    while !stop.load(Ordering::Relaxed) {
        match client.simple_query(sql).await {
            Ok(_) => seen.lock().unwrap().completed.push(Instant::now()),
            Err(_) => {
                seen.lock().unwrap().errors += 1;
                return;
            }
        }
    }
}

/// Whole report totals: (cycles, duration seconds, vCPU-hours).
pub fn measured(report: &Value) -> (u64, Decimal, Decimal) {
    let m = &report["measured"];
    (
        m["query_cycles"].as_u64().expect("query_cycles"),
        dec(&m["duration_seconds"]),
        dec(&m["vcpu_hours"]),
    )
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
