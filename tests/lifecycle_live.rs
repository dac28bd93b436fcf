//! Tier changes reaching live proxy sessions, through real PostgreSQL with
//! tokio-postgres: a Stripe upgrade raises the query rate of an open
//! session at once; after a downgrade, open connections above the new limit
//! stay, and new ones wait until the organization is under it.

mod common;

use std::time::{Duration, Instant};

use common::{
    admin_get,
    stripe::{
        create_org, deliver, now_secs, subscription_event, tick, wait_for_org, Sub, STARTER_PRICE,
    },
    Server,
};
use futures_util::future::join_all;
use tokio_postgres::{error::SqlState, Client, NoTls};

fn pg() -> Option<String> {
    common::require_service("DYNABASE_TEST_PG_ADDR", "127.0.0.1:5432")
}

async fn connect(server: &Server, org: &str) -> Result<Client, tokio_postgres::Error> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=trust_user.{org} dbname=postgres connect_timeout=5",
        server.proxy_port()
    );
    let (c, conn) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

/// The error of a connection attempt that must have been refused.
fn refused(attempt: Result<Client, tokio_postgres::Error>, why: &str) -> tokio_postgres::Error {
    match attempt {
        Ok(_) => panic!("admitted, but should be refused: {why}"),
        Err(e) => e,
    }
}

fn subscription(event_id: &str, kind: &str, customer: &str, price: &str, status: &str) -> String {
    subscription_event(&Sub {
        event_id,
        kind,
        created: now_secs(),
        subscription: "sub_1QsLive8xK2mLq4ZrLiveSub1",
        customer,
        price,
        lookup_key: None,
        status,
        org: None,
    })
}

#[tokio::test]
async fn a_stripe_upgrade_raises_the_rate_of_an_open_session_at_once() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut env = common::stripe::env();
    // FREE at 1 query/s, no burst, no queueing: refusals are deterministic.
    env.extend([
        ("DYNABASE__TIERS__FREE__QPS", "1"),
        ("DYNABASE__TIERS__FREE__BURST", "1"),
        ("DYNABASE__LIMITS__MAX_QUEUE_DELAY", "0ms"),
    ]);
    let server = Server::start(dir.path(), &env);
    create_org(&server, "rise", "free", &pg, Some("cus_Rise")).await;
    let c = connect(&server, "rise").await.expect("connect");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = join_all((0..5).map(|_| c.query_one("select 1", &[]))).await;
    assert!(
        before.iter().filter(|r| r.is_err()).count() >= 4,
        "FREE at 1/s refuses most of 5 at once"
    );

    let sent = Instant::now();
    deliver(
        &server,
        &subscription(
            "evt_1QsRise8xK2mLq4ZrMmMmMm",
            "updated",
            "cus_Rise",
            common::stripe::PRO_PRICE,
            "active",
        ),
    )
    .await;
    // The same session: PRO's 200/s admits 20 at once.
    loop {
        let after = join_all((0..20).map(|_| c.query_one("select 1", &[]))).await;
        if after.iter().all(Result::is_ok) {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "PRO limits not in force 1 s after the event: {:?}",
            after.iter().find(|r| r.is_err())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("upgrade in force {:?} after delivery", sent.elapsed());
}

#[tokio::test]
async fn after_a_downgrade_open_connections_stay_and_new_ones_wait_for_room() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut env = common::stripe::env();
    env.push(("DYNABASE__TIERS__FREE__MAX_CONNECTIONS", "2"));
    let server = Server::start(dir.path(), &env);
    create_org(&server, "shrink", "starter", &pg, Some("cus_Shrink")).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&server, "shrink").await.expect("STARTER admits 4"));
    }

    // The subscription ends: FREE after the grace period.
    deliver(
        &server,
        &subscription(
            "evt_1QsShrk8xK2mLq4ZrNnNnNn",
            "deleted",
            "cus_Shrink",
            STARTER_PRICE,
            "canceled",
        ),
    )
    .await;
    let org = wait_for_org(&server, "shrink", |o| !o["pending_tier_change"].is_null()).await;
    let effective = org["pending_tier_change"]["effective_at"].as_i64().unwrap();
    assert_eq!(org["pending_tier_change"]["to"], "free");
    let report = tick(&server, effective).await;
    assert_eq!(report["applied"][0]["to"], "free", "{report}");
    assert_eq!(
        admin_get(&server, "/admin/orgs/shrink").await.1["tier"],
        "free"
    );

    // The four open connections are not cut.
    for c in &clients {
        c.simple_query("select 1")
            .await
            .expect("open connection still works");
    }
    // A fifth is refused: 4 open, FREE allows 2.
    let err = refused(connect(&server, "shrink").await, "over the new limit");
    assert_eq!(err.code(), Some(&SqlState::from_code("53300")), "{err}");
    let db = err.as_db_error().expect("a PostgreSQL error");
    assert!(db.message().contains("tier FREE"), "{}", db.message());

    // Under the limit again (one left), new connections are admitted.
    clients.truncate(1);
    let deadline = Instant::now() + Duration::from_secs(3);
    let admitted = loop {
        match connect(&server, "shrink").await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Some(&SqlState::from_code("53300")), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("still refused after closing connections: {e}"),
        }
    };
    admitted
        .simple_query("select 1")
        .await
        .expect("new connection works");
    // That makes two: the limit.
    let err = refused(connect(&server, "shrink").await, "at the limit");
    assert_eq!(err.code(), Some(&SqlState::from_code("53300")));
}
