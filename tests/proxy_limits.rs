//! Connection limits per tier through the proxy against real PostgreSQL:
//! exactly the tier's limit of concurrent sessions is admitted, refusals
//! carry 53300 with an upgrade hint, and slots come back when
//! authentication fails or clients vanish without a goodbye.
//!
//! These tests use FREE organizations (5 connections, 10 queries/s), so
//! each sends only a handful of queries.

mod common;

use std::time::Duration;

use common::{
    pg::{
        self, conninfo, create_org, sessions, sqlstate, superuser, trust_user, try_connect,
        unique_org, wait_for_sessions, Session,
    },
    Server,
};

async fn free_org(server: &Server, pg: &str, prefix: &str) -> String {
    let org = unique_org(prefix);
    create_org(server, &org, "free", pg).await;
    org
}

async fn open_concurrently(info: &str, n: usize) -> Vec<Result<Session, tokio_postgres::Error>> {
    futures_util::future::join_all((0..n).map(|_| try_connect(info))).await
}

fn assert_limit_refusal(e: &tokio_postgres::Error, org: &str) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("a refusal with an ErrorResponse: {e:?}"));
    assert_eq!(db.code().code(), "53300", "{db:?}");
    assert!(
        db.message().contains("5 of 5 connections on tier FREE"),
        "message: {}",
        db.message()
    );
    assert!(
        db.message().contains(org),
        "message names the org: {}",
        db.message()
    );
    let hint = db.hint().unwrap_or_else(|| panic!("a hint: {db:?}"));
    assert!(
        hint.contains("STARTER") && hint.contains("10"),
        "hint names the next tier and its limit: {hint}"
    );
}

#[tokio::test]
async fn three_times_the_limit_at_once_admits_exactly_the_tier_limit() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let org = free_org(&server, &pg, "limit15").await;
    let info = conninfo(
        &server,
        &format!("{}.{org}", trust_user()),
        "postgres",
        None,
    );

    let attempts = open_concurrently(&info, 15).await;
    let (admitted, refused): (Vec<_>, Vec<_>) = attempts.into_iter().partition(Result::is_ok);
    let admitted: Vec<Session> = admitted.into_iter().map(Result::unwrap).collect();
    assert_eq!(admitted.len(), 5, "FREE admits 5 concurrent connections");
    assert_eq!(refused.len(), 10);
    for r in &refused {
        assert_limit_refusal(r.as_ref().err().unwrap(), &org);
    }
    for s in &admitted {
        let one: i32 = s.client.query_one("select 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1, "admitted sessions work");
    }
    assert_eq!(sessions(&server, &org).await.len(), 5);

    // One leaves; exactly one more gets in.
    let mut admitted = admitted;
    drop(admitted.pop());
    wait_for_sessions(&server, &org, 4).await;
    let again = open_concurrently(&info, 3).await;
    assert_eq!(again.iter().filter(|r| r.is_ok()).count(), 1);
    for r in again.iter().filter(|r| r.is_err()) {
        assert_limit_refusal(r.as_ref().err().unwrap(), &org);
    }
}

#[tokio::test]
async fn wrong_scram_passwords_are_relayed_as_28p01_and_free_their_slots() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let org = free_org(&server, &pg, "scramfail").await;
    let (su, password) = superuser();
    let user = format!("{su}.{org}");

    // More failures than the limit: a slot held by a failed attempt would
    // turn the 6th into a 53300.
    for attempt in 1..=6 {
        let wrong = format!("wrong-{attempt}");
        let err = try_connect(&conninfo(&server, &user, "postgres", Some(&wrong)))
            .await
            .err()
            .unwrap_or_else(|| panic!("attempt {attempt} with a wrong password succeeded"));
        let db = err
            .as_db_error()
            .expect("PostgreSQL's ErrorResponse relayed");
        assert_eq!(db.code().code(), "28P01", "attempt {attempt}: {db:?}");
        assert!(
            db.message()
                .contains(&format!("password authentication failed for user \"{su}\"")),
            "PostgreSQL's own message, for the role without the org: {}",
            db.message()
        );
    }
    wait_for_sessions(&server, &org, 0).await;

    let info = conninfo(&server, &user, "postgres", Some(&password));
    let opened = open_concurrently(&info, 5).await;
    let mut held = Vec::new();
    for (i, s) in opened.into_iter().enumerate() {
        let s = s.unwrap_or_else(|e| panic!("connection {i} after the failures: {e:?}"));
        let one: i32 = s.client.query_one("select 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        held.push(s);
    }
    // And the limit is still enforced.
    let sixth = try_connect(&info).await.err().expect("a 6th is refused");
    assert_limit_refusal(&sixth, &org);
}

#[tokio::test]
async fn clients_killed_abruptly_free_their_slots() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let org = free_org(&server, &pg, "killed").await;
    let info = conninfo(
        &server,
        &format!("{}.{org}", trust_user()),
        "postgres",
        None,
    );

    // Five psql processes, each in the middle of a query, then SIGKILL.
    let mut children = Vec::new();
    for _ in 0..5 {
        let mut cmd = pg::psql(&info, None);
        cmd.args(["-c", "select pg_sleep(30)"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        children.push(cmd.spawn().expect("spawn psql"));
    }
    pg::eventually(
        Duration::from_secs(15),
        "5 psql sessions running their query",
        || async {
            let s = sessions(&server, &org).await;
            (s.len() == 5 && s.iter().all(|s| s["state"] == "active")).then_some(())
        },
    )
    .await;
    let full = try_connect(&info).await.err().expect("the org is full");
    assert_eq!(sqlstate(&full).as_deref(), Some("53300"));
    for child in &mut children {
        child.start_kill().expect("SIGKILL psql");
    }
    for child in &mut children {
        child.wait().await.expect("psql reaped");
    }
    wait_for_sessions(&server, &org, 0).await;

    // Five tokio-postgres sessions dropped without a Terminate message:
    // the connection tasks are aborted, which just closes the sockets.
    let opened = open_concurrently(&info, 5).await;
    let opened: Vec<Session> = opened
        .into_iter()
        .map(|s| s.expect("slots freed after the kill"))
        .collect();
    wait_for_sessions(&server, &org, 5).await;
    for s in opened {
        s.connection.abort();
        let _ = s.connection.await;
        drop(s.client);
    }
    wait_for_sessions(&server, &org, 0).await;

    let again = open_concurrently(&info, 5).await;
    assert!(
        again.iter().all(Result::is_ok),
        "all 5 slots free again: {:?}",
        again
            .iter()
            .filter_map(|r| r.as_ref().err())
            .collect::<Vec<_>>()
    );
    let one: i32 = again[0]
        .as_ref()
        .unwrap()
        .client
        .query_one("select 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn a_client_stalled_in_authentication_holds_its_slot_only_until_the_auth_timeout() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("DYNABASE__PROXY__AUTH_TIMEOUT", "5s")]);
    let org = free_org(&server, &pg, "stalled").await;
    let (su, _) = superuser();

    // Five clients start SCRAM and never send a password.
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let (stream, code) =
            pg::stall_in_authentication(&server.proxy_addr, &format!("{su}.{org}"), "postgres")
                .await;
        assert_eq!(code, 10, "AuthenticationSASL relayed from PostgreSQL");
        stalled.push(stream);
    }
    let listed = sessions(&server, &org).await;
    assert_eq!(listed.len(), 5);
    assert!(
        listed.iter().all(|s| s["state"] == "authenticating"),
        "{listed:?}"
    );
    let info = conninfo(
        &server,
        &format!("{}.{org}", trust_user()),
        "postgres",
        None,
    );
    let refused = try_connect(&info).await.err().expect("the org is full");
    assert_limit_refusal(&refused, &org);

    // The proxy gives up on them with 08006 and takes the slots back.
    for stream in &mut stalled {
        let error = tokio::time::timeout(Duration::from_secs(10), pg::error_then_close(stream))
            .await
            .expect("the stalled connection is closed by the proxy");
        let (code, message) = error.expect("an ErrorResponse before the close");
        assert_eq!(code, "08006", "{message}");
        assert!(message.contains("authentication"), "{message}");
    }
    wait_for_sessions(&server, &org, 0).await;
    let opened = open_concurrently(&info, 5).await;
    assert!(opened.iter().all(Result::is_ok), "all 5 slots free again");
}
