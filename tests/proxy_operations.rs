//! Operating sessions through the proxy against real PostgreSQL: query
//! cancellation with the proxy's own keys (and none across tenants), the
//! admin session routes, the proxy's metrics by tier, refusals for unknown
//! organizations and unreachable upstreams, and an upstream PostgreSQL that
//! stops and restarts.

mod common;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    pg::{
        self, connect, connect_error, conninfo, create_org, eventually, random_i32, send_cancel,
        sessions, sqlstate, superuser, trust_user, try_connect, unique, unique_org,
        wait_for_sessions, RawSession,
    },
    Server, ADMIN_TOKEN,
};
use tokio_postgres::NoTls;

async fn org_with_trust_user(
    server: &Server,
    pg: &str,
    prefix: &str,
    tier: &str,
) -> (String, String) {
    let org = unique_org(prefix);
    create_org(server, &org, tier, pg).await;
    let info = conninfo(server, &format!("{}.{org}", trust_user()), "postgres", None);
    (org, info)
}

/// Waits until the org's only session is running a query.
async fn wait_until_active(server: &Server, org: &str) {
    eventually(Duration::from_secs(10), "the session is active", || async {
        let s = sessions(server, org).await;
        s.iter().any(|s| s["state"] == "active").then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cancel_request_through_the_proxy_cancels_the_running_query() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (org, info) = org_with_trust_user(&server, &pg, "cancel", "pro").await;
    let s = connect(&info).await;
    let token = s.client.cancel_token();

    let client = s.client;
    let query = tokio::spawn(async move {
        let r = client.simple_query("select pg_sleep(30)").await.map(|_| ());
        (r, client)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    wait_until_active(&server, &org).await;
    let started = Instant::now();

    // A cancel that reaches PostgreSQL before the query has started is a
    // no-op there, so repeat it until the query ends (at most 5 s).
    let mut query = query;
    let (result, client) = loop {
        token
            .cancel_query(NoTls)
            .await
            .expect("CancelRequest sent to the proxy");
        match tokio::time::timeout(Duration::from_secs(1), &mut query).await {
            Ok(joined) => break joined.unwrap(),
            Err(_) => assert!(
                started.elapsed() < Duration::from_secs(5),
                "the query was not cancelled within 5 s"
            ),
        }
    };
    let err = result.expect_err("the query is cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The session survives the cancel.
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn cancel_requests_with_other_keys_do_nothing_across_tenants() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (org_a, _) = org_with_trust_user(&server, &pg, "victim", "pro").await;
    let (org_b, info_b) = org_with_trust_user(&server, &pg, "other", "pro").await;
    let user_a = format!("{}.{org_a}", trust_user());

    // Org A's session, opened by hand to learn the key the proxy gave it.
    let mut a = RawSession::connect(&server.proxy_addr, &user_a, "postgres")
        .await
        .expect("org A session");
    let (pid_a, secret_a) = (a.process_id, a.secret_key);
    // Org B: a session of its own, with its own (real) key.
    let b = connect(&info_b).await;
    let mut b_raw = RawSession::connect(
        &server.proxy_addr,
        &format!("{}.{}", trust_user(), org_b),
        "postgres",
    )
    .await
    .expect("org B raw session");

    // The key is the proxy's own, not PostgreSQL's: the backend pid stays
    // hidden from clients.
    let backend_pid = a
        .simple_query("select pg_backend_pid()::text")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(
        backend_pid,
        vec![Some(pid_a.to_string())],
        "BackendKeyData is replaced"
    );

    let running = tokio::spawn(async move {
        let r = a.simple_query("select pg_sleep(3)").await;
        (r, a)
    });
    wait_until_active(&server, &org_a).await;

    // Random keys, near misses of A's key, and B's real keys mixed with A's.
    let mut forged: Vec<(i32, i32)> = (0..8u64)
        .map(|i| (random_i32(i), random_i32(i + 100)))
        .collect();
    forged.extend([
        (pid_a, secret_a ^ 1),
        (pid_a ^ 1, secret_a),
        (pid_a, secret_a.wrapping_add(1)),
        (pid_a, b_raw.secret_key),
        (b_raw.process_id, secret_a),
        (secret_a, pid_a),
    ]);
    for (pid, secret) in forged {
        assert!(
            (pid, secret) != (pid_a, secret_a),
            "a forged key is never A's own"
        );
        send_cancel(&server.proxy_addr, pid, secret).await;
    }
    // B cancels with its genuine keys: only B's own (idle) sessions are
    // affected, i.e. nothing happens.
    b.client
        .cancel_token()
        .cancel_query(NoTls)
        .await
        .expect("B's cancel is accepted");
    send_cancel(&server.proxy_addr, b_raw.process_id, b_raw.secret_key).await;

    let (result, mut a) = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("A's query finishes")
        .unwrap();
    let result = result.expect("A's session stays connected");
    assert!(
        result.is_ok(),
        "A's pg_sleep(3) completes normally: {result:?}"
    );
    let one: i32 = b.client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "B's session is unaffected");
    assert_eq!(
        b_raw.simple_query("select 1").await.unwrap(),
        Ok(vec![Some("1".to_owned())])
    );

    // Control: A's real key does cancel A's query.
    let running = tokio::spawn(async move { a.simple_query("select pg_sleep(30)").await });
    wait_until_active(&server, &org_a).await;
    let started = Instant::now();
    let outcome = loop {
        send_cancel(&server.proxy_addr, pid_a, secret_a).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if running.is_finished() {
            break running.await.unwrap().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "A's own key did not cancel within 5 s"
        );
    };
    let (code, _) = outcome.expect_err("cancelled with A's own key");
    assert_eq!(code, "57014");
}

// ---------------------------------------------------------------------------
// Admin session routes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn admin_routes_list_sessions_and_terminate_them() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (org, info) = org_with_trust_user(&server, &pg, "admin", "pro").await;
    let (other_org, other_info) = org_with_trust_user(&server, &pg, "admin-other", "starter").await;

    let s = connect(&info).await;
    let other = connect(&other_info).await;
    let listed = wait_for_sessions(&server, &org, 1).await;
    let view = &listed[0];
    assert_eq!(view["org"], org.as_str());
    assert_eq!(view["role"], trust_user().as_str());
    assert_eq!(view["database"], "postgres");
    assert_eq!(view["state"], "idle");
    assert!(
        view["tier"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("pro")),
        "{view}"
    );
    assert!(
        view["client_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{view}"
    );
    assert!(
        view["started_at"].as_u64().is_some_and(|t| t > 0) || view["started_at"].is_string(),
        "{view}"
    );
    let id = view["id"].as_u64().expect("numeric id");
    let cycles_before = view["query_cycles"].as_u64().expect("query_cycles");

    // Query cycles count up: 3 simple queries and 1 extended (prepare +
    // execute = 2 cycles).
    for i in 0..3 {
        s.client.simple_query(&format!("select {i}")).await.unwrap();
    }
    s.client
        .query_one("select $1::int", &[&7i32])
        .await
        .unwrap();
    let after = eventually(Duration::from_secs(5), "query cycles counted", || async {
        let v = sessions(&server, &org).await;
        let n = v.first()?["query_cycles"].as_u64()?;
        (n >= cycles_before + 4).then_some(n)
    })
    .await;
    assert!(after >= cycles_before + 4);

    // While a query runs the session is active.
    let client = s.client;
    let sleeping = tokio::spawn(async move {
        client.simple_query("select pg_sleep(1)").await.unwrap();
        client
    });
    wait_until_active(&server, &org).await;
    let client = sleeping.await.unwrap();
    eventually(Duration::from_secs(5), "idle again", || async {
        let v = sessions(&server, &org).await;
        (v.first()?["state"] == "idle").then_some(())
    })
    .await;

    // Each org sees only its own sessions.
    let others = sessions(&server, &other_org).await;
    assert_eq!(others.len(), 1);
    assert_ne!(others[0]["id"], id);

    // Terminate the idle session: 202, FATAL 57P01 to the client.
    let http = common::client();
    let resp = http
        .delete(server.url(&format!("/admin/connections/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let ended = tokio::time::timeout(Duration::from_secs(10), s.connection)
        .await
        .expect("the session ends")
        .unwrap();
    let err = ended.expect_err("ended by the proxy with an error");
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");
    let next = client.simple_query("select 1").await.unwrap_err();
    assert!(
        next.is_closed() || sqlstate(&next).as_deref() == Some("57P01"),
        "{next:?}"
    );
    wait_for_sessions(&server, &org, 0).await;

    // Terminate a session in the middle of a query: its query fails.
    let busy = connect(&info).await;
    let listed = wait_for_sessions(&server, &org, 1).await;
    let busy_id = listed[0]["id"].as_u64().unwrap();
    let busy_client = busy.client;
    let query = tokio::spawn(async move { busy_client.simple_query("select pg_sleep(30)").await });
    wait_until_active(&server, &org).await;
    let resp = http
        .delete(server.url(&format!("/admin/connections/{busy_id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let failed = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the running query ends promptly")
        .unwrap()
        .expect_err("the running query fails");
    assert!(
        failed.is_closed() || sqlstate(&failed).as_deref() == Some("57P01"),
        "{failed:?}"
    );
    wait_for_sessions(&server, &org, 0).await;

    // The other org's session was not touched.
    let one: i32 = other
        .client
        .query_one("select 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);

    // Unknown ids and orgs are 404; the routes need the token.
    for path in [
        "/admin/connections/999999",
        "/admin/connections/not-a-number",
    ] {
        let resp = http
            .delete(server.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    let resp = http
        .delete(server.url(&format!("/admin/connections/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "an ended session is gone");
    let resp = http
        .get(server.url("/admin/orgs/no-such-org/connections"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = http
        .get(server.url(&format!("/admin/orgs/{org}/connections")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn metrics_count_admissions_connections_and_query_cycles_by_tier() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (_org, info) = org_with_trust_user(&server, &pg, "metrics", "starter").await;
    let s = connect(&info).await;
    for i in 0..3 {
        s.client.simple_query(&format!("select {i}")).await.unwrap();
    }
    // Cycles are tallied on the session's thread and published a moment later.
    let expected = [
        "dynabase_proxy_admissions_total{tier=\"starter\"} 1",
        "dynabase_proxy_active_connections{tier=\"starter\"} 1",
        "dynabase_proxy_handshake_seconds_count{tier=\"starter\",start=\"warm\"} 1",
        "dynabase_proxy_query_cycles_total{tier=\"starter\"} 3",
        "dynabase_proxy_query_cycle_seconds_count{tier=\"starter\"} 3",
    ];
    let metrics = eventually(
        Duration::from_secs(5),
        "cycle metrics published",
        || async {
            let text = server.metrics().await;
            expected
                .iter()
                .all(|line| text.lines().any(|l| l == *line))
                .then_some(text)
        },
    )
    .await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dynabase_proxy_query_cycle_seconds{tier=\"starter\",quantile=")),
        "{metrics}"
    );

    drop(s);
    eventually(
        Duration::from_secs(5),
        "the connection gauge drops",
        || async {
            let text = server.metrics().await;
            text.lines()
                .any(|l| l == "dynabase_proxy_active_connections{tier=\"starter\"} 0")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn terminating_a_session_stuck_in_authentication_ends_it_promptly() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The default auth_timeout (10 s) is longer than the 5 s allowed below.
    let server = Server::start(dir.path(), &[]);
    let org = unique_org("authkill");
    create_org(&server, &org, "pro", &pg).await;
    let (su, _) = superuser();
    let (mut stream, code) =
        pg::stall_in_authentication(&server.proxy_addr, &format!("{su}.{org}"), "postgres").await;
    assert_eq!(code, 10, "AuthenticationSASL");
    let listed = wait_for_sessions(&server, &org, 1).await;
    assert_eq!(listed[0]["state"], "authenticating");
    let id = listed[0]["id"].as_u64().unwrap();

    let resp = common::client()
        .delete(server.url(&format!("/admin/connections/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let error = tokio::time::timeout(Duration::from_secs(5), pg::error_then_close(&mut stream))
        .await
        .expect("the terminated connection is closed within 5 s, not at the auth timeout");
    if let Some((code, message)) = error {
        assert_eq!(code, "57P01", "{message}");
    }
    wait_for_sessions(&server, &org, 0).await;
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unknown_or_missing_organizations_are_refused_with_28000() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let missing = unique_org("never-created");

    let err = connect_error(&conninfo(&server, &format!("app.{missing}"), "app", None)).await;
    assert_eq!(err.code().code(), "28000");
    assert!(
        err.message().contains("unknown organization"),
        "{}",
        err.message()
    );
    assert!(err.message().contains(&missing), "{}", err.message());

    // Asked again at once: answered from the remembered miss, not the store.
    let err = connect_error(&conninfo(&server, &format!("app.{missing}"), "app", None)).await;
    assert_eq!(err.code().code(), "28000");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("dynabase_unknown_org_cache_hits_total 1"),
        "{metrics}"
    );
    // Created now: known at once, not after the miss expires (the upstream
    // is unreachable, so the refusal is 08006 rather than 28000).
    create_org(&server, &missing, "free", "127.0.0.1:1").await;
    let err = connect_error(&conninfo(&server, &format!("app.{missing}"), "app", None)).await;
    assert_eq!(err.code().code(), "08006", "{}", err.message());

    let err = connect_error(&conninfo(&server, "app.Not_An_Org", "app", None)).await;
    assert_eq!(err.code().code(), "28000");
    assert!(
        err.message().contains("unknown organization"),
        "{}",
        err.message()
    );

    let err = connect_error(&conninfo(&server, "plainuser", "app", None)).await;
    assert_eq!(err.code().code(), "28000");
    assert!(
        err.message().contains("no organization"),
        "{}",
        err.message()
    );
    assert!(err.hint().is_some_and(|h| h.contains("user=")), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_upstream_is_refused_promptly_with_08006() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let org = unique_org("nowhere");
    // Port 1 on loopback: nothing listens, connections are refused at once.
    create_org(&server, &org, "free", "127.0.0.1:1").await;
    let database = unique("somedb");
    let info = conninfo(&server, &format!("app.{org}"), &database, None);

    // More attempts than the FREE limit: each one's slot is given back.
    for attempt in 1..=6 {
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), connect_error(&info))
            .await
            .unwrap_or_else(|_| panic!("attempt {attempt} hung"));
        assert_eq!(err.code().code(), "08006", "attempt {attempt}: {err:?}");
        assert!(
            err.message().contains(&database) && err.message().contains(&org),
            "names the database and org: {}",
            err.message()
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    wait_for_sessions(&server, &org, 0).await;
}

// ---------------------------------------------------------------------------
// Upstream restart, on a throwaway PostgreSQL instance
// ---------------------------------------------------------------------------

/// A PostgreSQL 15 cluster of its own in a temporary directory, trusting
/// everyone on 127.0.0.1, stopped on drop.
struct TempPg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TempPg {
    /// `None` (test skipped) when the PostgreSQL server binaries are absent.
    fn start() -> Option<TempPg> {
        let bin = PathBuf::from(pg::env_or(
            "DYNABASE_TEST_PG_BIN",
            "/usr/lib/postgresql/15/bin",
        ));
        if !bin.join("initdb").exists() || !bin.join("pg_ctl").exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "CI requires PostgreSQL server binaries in {}",
                    bin.display()
                );
            }
            eprintln!("SKIP: no initdb/pg_ctl in {}", bin.display());
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("dynabase-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let as_postgres = is_root();
        if as_postgres {
            // initdb refuses to run as root; the cluster belongs to postgres.
            let ok = Command::new("chown")
                .args(["postgres:", dir.path().to_str().unwrap()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the cluster directory to postgres");
        }
        let mut pg = TempPg {
            dir,
            bin,
            port: 0,
            as_postgres,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                pg.data().to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        for _ in 0..3 {
            pg.port = free_port();
            if pg.try_ctl(&["start"]) {
                return Some(pg);
            }
        }
        panic!(
            "could not start a throwaway PostgreSQL; see {}",
            pg.log().display()
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("pg.log")
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.current_dir("/");
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl <action>` with the cluster's options; waits for completion.
    fn try_ctl(&self, action: &[&str]) -> bool {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=30",
            self.port,
            self.dir.path().display()
        );
        self.command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap()])
            .args(["-l", self.log().to_str().unwrap()])
            .args(["-o", &options, "-w", "-t", "60"])
            .args(action)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn ctl(&self, action: &[&str]) {
        assert!(
            self.try_ctl(action),
            "pg_ctl {action:?} failed; see {}",
            self.log().display()
        );
    }
}

impl Drop for TempPg {
    fn drop(&mut self) {
        let _ = self.try_ctl(&["stop", "-m", "immediate"]);
    }
}

/// Waits for a session's connection task to end; returns how it ended.
async fn ended(
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> Result<(), tokio_postgres::Error> {
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the session ends within 10 s")
        .unwrap()
}

#[tokio::test]
async fn an_upstream_restart_ends_sessions_cleanly_and_new_sessions_work() {
    let Some(upstream) = tokio::task::spawn_blocking(TempPg::start).await.unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let org = unique_org("restart");
    create_org(&server, &org, "starter", &upstream.addr()).await;
    let (su, _) = superuser();
    let info = conninfo(&server, &format!("{su}.{org}"), "postgres", None);

    // One idle session, one in the middle of a query.
    let idle = connect(&info).await;
    idle.client.simple_query("select 1").await.unwrap();
    let busy = connect(&info).await;
    let busy_client = busy.client;
    let query = tokio::spawn(async move { busy_client.simple_query("select pg_sleep(60)").await });
    wait_for_sessions(&server, &org, 2).await;
    wait_until_active(&server, &org).await;

    // Stop: PostgreSQL ends its sessions; the proxy relays that and closes.
    let upstream = tokio::task::spawn_blocking(move || {
        upstream.ctl(&["stop", "-m", "fast"]);
        upstream
    })
    .await
    .unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the running query ends")
        .unwrap()
        .expect_err("the running query fails");
    assert!(
        failed.is_closed() || sqlstate(&failed).as_deref() == Some("57P01"),
        "{failed:?}"
    );
    let idle_client = idle.client;
    if let Err(e) = &ended(idle.connection).await {
        assert!(
            e.is_closed() || sqlstate(e).as_deref() == Some("57P01"),
            "idle session ended cleanly: {e:?}"
        );
    }
    assert!(idle_client.simple_query("select 1").await.is_err());
    wait_for_sessions(&server, &org, 0).await;

    // While PostgreSQL is down: a clear 08006, promptly.
    let started = Instant::now();
    let down = connect_error(&info).await;
    assert_eq!(down.code().code(), "08006", "{down:?}");
    assert!(
        down.message().contains("\"postgres\""),
        "{}",
        down.message()
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Back up: new sessions work.
    let upstream = tokio::task::spawn_blocking(move || {
        upstream.ctl(&["start"]);
        upstream
    })
    .await
    .unwrap();
    let fresh = eventually(
        Duration::from_secs(15),
        "a session after the start",
        || async { try_connect(&info).await.ok() },
    )
    .await;
    let one: i32 = fresh
        .client
        .query_one("select 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);

    // A restart in one step: the open session ends, the next one works.
    let upstream = tokio::task::spawn_blocking(move || {
        upstream.ctl(&["restart", "-m", "fast"]);
        upstream
    })
    .await
    .unwrap();
    let fresh_client = fresh.client;
    if let Err(e) = ended(fresh.connection).await {
        assert!(
            e.is_closed() || sqlstate(&e).as_deref() == Some("57P01"),
            "{e:?}"
        );
    }
    assert!(fresh_client.simple_query("select 1").await.is_err());
    let after = connect(&info).await;
    let one: i32 = after
        .client
        .query_one("select 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);
    drop(upstream);
}
