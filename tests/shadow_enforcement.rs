//! Shadow enforcement through the proxy (spec "Migration Path"): the same
//! load on a FREE org (5 connections, 10 queries/s) in shadow — nothing
//! refused, what enforcement would have refused counted — and in enforce;
//! switching applies to live sessions.
//!
//! The queue delay is 0 here so that enforcement refuses at once instead of
//! holding a cycle: a client waits for each answer, so held cycles would
//! slow the enforced run and the two runs would no longer offer the same
//! load at the same times. With no holding, the only difference between the
//! runs is the quota refilled while they last, which bounds the comparison.

mod common;

use std::time::{Duration, Instant};

use common::{admin_get, admin_send, pg, Server};
use serde_json::{json, Value};

async fn set_mode(server: &Server, mode: &str) {
    let (status, body) = admin_send(
        server,
        reqwest::Method::PUT,
        "/admin/modes",
        json!({ "enforcement": mode }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enforcement"], mode);
}

async fn would_have_refused(server: &Server, org: &str) -> Value {
    let (status, report) = admin_get(server, &format!("/admin/orgs/{org}/usage")).await;
    assert_eq!(status, 200, "{report}");
    report["would_have_refused"].clone()
}

/// Opens `n` sessions; returns them and the SQLSTATEs of the refused ones.
async fn open(info: &str, n: usize) -> (Vec<pg::Session>, Vec<String>) {
    let mut sessions = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..n {
        match pg::try_connect(info).await {
            Ok(s) => sessions.push(s),
            Err(e) => refused.push(pg::sqlstate(&e).unwrap_or_default()),
        }
    }
    (sessions, refused)
}

/// 40 queries as fast as possible on each session at once; the SQLSTATEs
/// of the refused ones and how long it took.
async fn timed_hammer(sessions: &[pg::Session]) -> (Vec<String>, Duration) {
    let started = Instant::now();
    let refused = hammer(sessions).await;
    (refused, started.elapsed())
}

async fn hammer(sessions: &[pg::Session]) -> Vec<String> {
    let runs = sessions.iter().map(|s| async move {
        let mut refused = Vec::new();
        for _ in 0..40 {
            if let Err(e) = s.client.simple_query("SELECT 1").await {
                refused.push(pg::sqlstate(&e).unwrap_or_default());
            }
        }
        refused
    });
    futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_admits_everything_and_counts_what_enforce_refuses() {
    let Some(upstream) = pg::pg_service() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(
        dir.path(),
        &[
            ("DYNABASE__TIERS__FREE__QPS", "10"),
            ("DYNABASE__LIMITS__MAX_QUEUE_DELAY", "0ms"),
        ],
    );
    let org = pg::unique_org("shadow");
    pg::create_org(&server, &org, "free", &upstream).await;
    let (user, password) = pg::superuser();
    let info = pg::conninfo(
        &server,
        &format!("{user}.{org}"),
        "postgres",
        Some(&password),
    );

    // Enforce: 7 connections on a 5-connection tier, then a burst of queries.
    let (sessions, refused) = open(&info, 7).await;
    assert_eq!(refused, ["53300", "53300"]);
    let (enforced_cycles, enforced_took) = timed_hammer(&sessions).await;
    assert!(!enforced_cycles.is_empty(), "the burst is refused in part");
    assert!(
        enforced_cycles.iter().all(|c| c == "53400"),
        "{enforced_cycles:?}"
    );
    drop(sessions);
    pg::wait_for_sessions(&server, &org, 0).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    // Shadow, the same load: nothing refused, the same connections counted.
    set_mode(&server, "shadow").await;
    let (sessions, refused) = open(&info, 7).await;
    assert!(refused.is_empty(), "{refused:?}");
    // The same query load as enforced: on five sessions.
    let (shadow_cycles, shadow_took) = timed_hammer(&sessions[..5]).await;
    assert!(shadow_cycles.is_empty(), "{shadow_cycles:?}");
    let counted = would_have_refused(&server, &org).await;
    assert_eq!(counted["enforcement"], "shadow", "{counted}");
    assert_eq!(counted["connections"], 2, "as enforce refused: {counted}");
    let counted_cycles = counted["query_cycles"].as_u64().unwrap_or(0);
    // Both runs offer 200 cycles against 10 at once plus 10 a second: they
    // differ only by the cycles refilled while the longer run lasted.
    let refill = (10.0 * enforced_took.max(shadow_took).as_secs_f64()).ceil() as u64 + 1;
    let enforced = enforced_cycles.len() as u64;
    eprintln!(
        "same load: enforce refused {enforced} query cycles in {enforced_took:?}, \
         shadow counted {counted_cycles} in {shadow_took:?} (bound {refill})"
    );
    assert!(
        counted_cycles.abs_diff(enforced) <= refill,
        "enforce refused {enforced}, shadow counted {counted_cycles}, bound {refill}"
    );
    // The two sessions enforcement would have refused work.
    for s in &sessions[5..] {
        s.client.simple_query("SELECT 1").await.expect("admitted");
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(
            "dynabase_shadow_refusals_total{tier=\"free\",reason=\"connection_limit\"} 2"
        ) || metrics.contains(
            "dynabase_shadow_refusals_total{reason=\"connection_limit\",tier=\"free\"} 2"
        ),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("shadow"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Back to enforce: the live sessions are limited again at once.
    set_mode(&server, "enforce").await;
    let live = hammer(&sessions).await;
    assert!(
        !live.is_empty() && live.iter().all(|c| c == "53400"),
        "{live:?}"
    );
    let (_, refused) = open(&info, 1).await;
    assert_eq!(
        refused,
        ["53300"],
        "7 sessions are open on a 5-connection tier"
    );
}
