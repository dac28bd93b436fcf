//! SIGTERM with sessions open: the proxy stops accepting, lets sessions
//! finish until the deadline, then ends them with 57P01 and exits 0.

mod common;

use std::time::{Duration, Instant};

use common::{client, Server, ADMIN_TOKEN};

#[tokio::test]
async fn sigterm_drains_then_terminates_sessions_with_57p01() {
    let Some(pg) = common::require_service("DYNABASE_TEST_PG_ADDR", "127.0.0.1:5432") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("DYNABASE__SHUTDOWN__DEADLINE", "2s")]);
    let created = client()
        .post(server.url("/admin/orgs"))
        .bearer_auth(ADMIN_TOKEN)
        .body(format!(
            r#"{{"id":"drain","name":"D","tier":"starter","upstream":"{pg}"}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let conninfo = format!(
        "host=127.0.0.1 port={} user=trust_user.drain dbname=postgres",
        server.proxy_port()
    );
    let (pg_client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("session through the proxy");
    let conn_task = tokio::spawn(connection);
    pg_client.simple_query("select 1").await.unwrap();

    let proxy_addr = server.proxy_addr.clone();
    let started = Instant::now();
    let waiter = std::thread::spawn(move || server.terminate(Duration::from_secs(10)));

    // While draining, the open session still works...
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg_client
        .simple_query("select 2")
        .await
        .expect("session works while draining");
    // ...and new connections are not accepted.
    assert!(
        std::net::TcpStream::connect(&proxy_addr).is_err(),
        "listener closed"
    );

    // At the deadline the session is ended by the proxy with 57P01.
    let ended = tokio::time::timeout(Duration::from_secs(8), conn_task)
        .await
        .expect("session ended by the deadline")
        .expect("connection task");
    let err = ended.expect_err("the connection ends with an error");
    let db = err
        .as_db_error()
        .expect("FATAL ErrorResponse from the proxy");
    assert_eq!(db.code().code(), "57P01");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "sessions may finish before the deadline"
    );

    let status = waiter.join().unwrap().expect("process exited");
    assert!(status.success(), "exit status {status:?}");
}
