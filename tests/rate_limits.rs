//! Per-organization query-rate limits through the proxy, with tokio-postgres
//! (extended protocol, pipelining) and simple queries, against real
//! PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::{
    client,
    pg::{query_message, RawSession},
    Server, ADMIN_TOKEN,
};
use futures_util::future::join_all;
use tokio_postgres::{error::SqlState, Client, NoTls};

async fn connect(server: &Server, org: &str) -> Client {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=trust_user.{org} dbname=postgres",
        server.proxy_port()
    );
    let (c, conn) = tokio_postgres::connect(&conninfo, NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

fn is_rate_limited(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::from_code("53400"))
}

/// Changes the org's tier through the admin API (it applies to open sessions).
async fn set_tier(server: &Server, org: &str, tier: &str) {
    let r = client()
        .patch(server.url(&format!("/admin/orgs/{org}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "tier": tier }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Whether, within 5 s, 20 queries sent at once on `c` are all admitted.
async fn twenty_at_once_fit(c: &Client) -> bool {
    for _ in 0..50 {
        let burst = join_all((0..20).map(|_| c.query_one("select 1", &[]))).await;
        if burst.iter().all(Result::is_ok) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn pg() -> Option<String> {
    common::require_service("DYNABASE_TEST_PG_ADDR", "127.0.0.1:5432")
}

#[tokio::test]
async fn a_free_org_driven_at_50_qps_gets_10_per_second() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::pg::create_org(&server, "fifty", "free", &pg).await;
    let clients = join_all((0..5).map(|_| connect(&server, "fifty"))).await;

    // Each prepares its statement once, so a query is one cycle (Bind/Execute/Sync).
    let mut prepared = Vec::new();
    for c in &clients {
        let statement = loop {
            match c.prepare("select 1").await {
                Ok(s) => break s,
                Err(e) if is_rate_limited(&e) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("prepare: {e}"),
            }
        };
        prepared.push(statement);
    }
    // Five connections, each offering 10 cycles/s: 50 QPS for the org.
    // The first second spends the burst; the next ten are measured.
    let start = Instant::now();
    let window = (start + Duration::from_secs(1))..(start + Duration::from_secs(11));
    let measured = join_all(
        clients
            .iter()
            .zip(&prepared)
            .map(|(c, s)| offer_10_per_second(c, s, window.clone())),
    )
    .await;
    let ok: u32 = measured.iter().map(|(ok, _)| ok).sum();
    let refused: u32 = measured.iter().map(|(_, r)| r).sum();
    assert!(
        (90..=110).contains(&ok),
        "admitted {ok} in 10 s (refused {refused})"
    );
    // Waiting up to the queue delay lowers the offered rate below 50/s;
    // what cannot wait is refused.
    assert!(refused > 100, "the rest are refused: {refused}");
    // Every connection still works.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for c in &clients {
        c.simple_query("select 1")
            .await
            .expect("connection usable after refusals");
    }
}

/// Runs `statement` every 100 ms until the window ends; counts the answers
/// that arrive inside it.
async fn offer_10_per_second(
    c: &Client,
    statement: &tokio_postgres::Statement,
    window: std::ops::Range<Instant>,
) -> (u32, u32) {
    let (mut ok, mut refused) = (0u32, 0u32);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < window.end {
        tick.tick().await;
        let result = c.query_one(statement, &[]).await;
        if !window.contains(&Instant::now()) {
            continue;
        }
        match result {
            Ok(_) => ok += 1,
            Err(e) if is_rate_limited(&e) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    (ok, refused)
}

/// FREE at 1 query/s, burst 1, no queueing: refusals are deterministic.
const STRICT: &[(&str, &str)] = &[
    ("DYNABASE__TIERS__FREE__QPS", "1"),
    ("DYNABASE__TIERS__FREE__BURST", "1"),
    ("DYNABASE__LIMITS__MAX_QUEUE_DELAY", "0ms"),
];

#[tokio::test]
async fn a_refused_cycle_inside_a_transaction_leaves_it_usable() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), STRICT);
    common::pg::create_org(&server, "txn", "free", &pg).await;
    let c = connect(&server, "txn").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    c.batch_execute("begin").await.unwrap();
    let err = c
        .query_one("select 42", &[])
        .await
        .expect_err("over the limit");
    assert!(is_rate_limited(&err), "{err}");
    let db = err.as_db_error().unwrap();
    assert_eq!(
        db.message(),
        "rate limit of 1 queries/s exceeded for organization txn on tier FREE"
    );
    assert!(
        db.detail().unwrap().starts_with("Retry after "),
        "{:?}",
        db.detail()
    );
    assert!(db.hint().unwrap().contains("STARTER"), "{:?}", db.hint());

    // PostgreSQL never saw the refused query: the transaction is not aborted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.batch_execute("create temp table t(x int)").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.batch_execute("commit")
        .await
        .expect("the transaction commits");
}

#[tokio::test]
async fn a_pipelining_client_stays_in_step_after_refusals() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DYNABASE__TIERS__FREE__QPS", "1"),
        ("DYNABASE__TIERS__FREE__BURST", "3"),
        ("DYNABASE__LIMITS__MAX_QUEUE_DELAY", "0ms"),
    ];
    let server = Server::start(dir.path(), &env);
    common::pg::create_org(&server, "pipe", "free", &pg).await;
    let c = connect(&server, "pipe").await;
    tokio::time::sleep(Duration::from_millis(3100)).await;

    // Six extended-protocol queries sent back to back (tokio-postgres pipelines them).
    let statement = c.prepare("select $1::int").await.unwrap();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let results = join_all((0..6i32).map(|i| {
        let (c, s) = (&c, &statement);
        async move { c.query_one(s, &[&i]).await.map(|row| row.get::<_, i32>(0)) }
    }))
    .await;
    let mut admitted = 0;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => {
                assert_eq!(*v, i as i32, "each answer matches its query");
                admitted += 1;
            }
            Err(e) => assert!(is_rate_limited(e), "query {i}: {e}"),
        }
    }
    assert_eq!(
        admitted, 3,
        "the burst of 3 is admitted, the rest refused: {results:?}"
    );
    assert!(results[..3].iter().all(Result::is_ok));

    // Simple-protocol queries in a batch also stay in step.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rows = c.simple_query("select 7").await.unwrap();
    let values: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["7"]);
}

#[tokio::test]
async fn an_upgrade_raises_the_limit_of_an_open_session() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), STRICT);
    common::pg::create_org(&server, "grow", "free", &pg).await;
    let c = connect(&server, "grow").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let before = join_all((0..5).map(|_| c.query_one("select 1", &[]))).await;
    assert!(
        before.iter().filter(|r| r.is_err()).count() >= 4,
        "FREE at 1/s refuses most"
    );

    set_tier(&server, "grow", "starter").await;
    // The same session now runs at STARTER's 50/s (burst 50).
    assert!(
        twenty_at_once_fit(&c).await,
        "20 at once fit STARTER's burst"
    );
}

#[tokio::test]
async fn a_downgrade_limits_an_open_session_that_had_no_limit() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), STRICT);
    common::pg::create_org(&server, "shrink", "enterprise", &pg).await;
    let c = connect(&server, "shrink").await;
    let before = join_all((0..20).map(|_| c.query_one("select 1", &[]))).await;
    assert!(before.iter().all(Result::is_ok), "ENTERPRISE has no limit");
    // A transaction open across the change must carry on.
    c.batch_execute("begin; set local work_mem = '7MB'")
        .await
        .expect("begin");

    set_tier(&server, "shrink", "free").await;
    // The same session now runs at FREE's 1/s (burst 1).
    let mut refused = 0;
    for _ in 0..50 {
        let after = join_all((0..5).map(|_| c.query_one("select 1", &[]))).await;
        refused = after
            .iter()
            .filter(|r| r.as_ref().is_err_and(is_rate_limited))
            .count();
        if refused >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused >= 4, "FREE at 1/s refuses most of 5 at once");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // One cycle (a prepared query would take two).
    let rows = c.simple_query("show work_mem").await.expect("show");
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("7MB"), "still in the transaction");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.batch_execute("rollback").await.expect("rollback");
}

#[tokio::test]
async fn the_rest_of_a_refused_query_stays_dropped_when_the_limit_is_lifted() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), STRICT);
    common::pg::create_org(&server, "split", "free", &pg).await;
    let mut raw = RawSession::connect(&server.proxy_addr, "trust_user.split", "postgres")
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let first = raw.simple_query("select 1").await.unwrap();
    assert!(first.is_ok(), "the burst of 1 admits it: {first:?}");

    // The burst is spent: a Query is refused from its header, while the
    // client is still sending its body.
    let refused = query_message("select 'the rest of this body is not SQL'");
    let (head, rest) = refused.split_at(12);
    raw.send(head).await.unwrap();
    let answer = raw.read_results().await.unwrap();
    assert_eq!(
        answer.as_ref().map_err(|(code, _)| code.as_str()),
        Err("53400"),
        "{answer:?}"
    );

    // ENTERPRISE has no limit; the org's other session shows when it applies.
    set_tier(&server, "split", "enterprise").await;
    let other = connect(&server, "split").await;
    assert!(twenty_at_once_fit(&other).await, "the limit is lifted");

    // The refused Query's remaining bytes must not reach PostgreSQL, which
    // would read them as messages and end the session.
    let mut tail = rest.to_vec();
    tail.extend_from_slice(&query_message("select 7"));
    raw.send(&tail).await.unwrap();
    let rows = raw.read_results().await.expect("the session is alive");
    assert_eq!(rows, Ok(vec![Some("7".to_owned())]));
}
