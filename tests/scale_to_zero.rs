//! Scale-to-zero end to end: the real binary, tenant PostgreSQL clusters
//! this test creates (initdb), the `local` and `command` drivers, and
//! tokio-postgres and psql connecting while the database is down.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{
    admin_get, admin_send,
    cluster::Cluster,
    pg::{self, connect, conninfo, eventually, try_connect, unique_org},
    Server,
};
use reqwest::Method;
use serde_json::{json, Value};

fn start(dir: &Path, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("DYNABASE__LIFECYCLE__ALLOW_CLOCK_OVERRIDE", "true"),
        ("RUST_LOG", "warn,dynabase_actors::scale_to_zero=info"),
    ];
    env.extend_from_slice(extra);
    Server::start(dir, &env)
}

async fn create(server: &Server, tier: &str, cluster: &Cluster, spec: Value) -> String {
    let org = unique_org("s2z");
    pg::create_org(server, &org, tier, &cluster.upstream()).await;
    let (status, body) = admin_send(
        server,
        Method::PUT,
        &format!("/admin/orgs/{org}/compute"),
        spec,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "active", "{body}");
    org
}

async fn compute(server: &Server, org: &str) -> Value {
    let (status, body) = admin_get(server, &format!("/admin/orgs/{org}/compute")).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn tick(server: &Server, now: i64) -> Value {
    let (status, body) = admin_send(
        server,
        Method::POST,
        "/admin/scale-to-zero/tick",
        json!({ "now": now }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn info(server: &Server, org: &str) -> String {
    conninfo(server, &format!("postgres.{org}"), "postgres", None)
}

async fn select_one(conninfo: &str) {
    let session = connect(conninfo).await;
    let row = session
        .client
        .query_one("SELECT 1::int4", &[])
        .await
        .expect("SELECT 1");
    assert_eq!(row.get::<_, i32>(0), 1);
}

/// The value of the first metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_org_is_suspended_and_the_next_connection_wakes_it() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path(), &[]);
    let org = create(&server, "starter", &cluster, cluster.local_spec()).await;
    select_one(&info(&server, &org)).await;

    // Not idle long enough: nothing happens.
    let report = tick(&server, now_ms() + 60_000).await;
    assert_eq!(report["suspended"], json!([]), "{report}");
    // With a session open the org is busy, however late it is.
    let held = connect(&info(&server, &org)).await;
    let report = tick(&server, now_ms() + 600_000).await;
    assert_eq!(report["suspended"], json!([]), "{report}");
    drop(held);
    pg::wait_for_sessions(&server, &org, 0).await;

    // Idle for 10 minutes (passed in): suspended, the cluster is stopped.
    let report = tick(&server, now_ms() + 1_200_000).await;
    assert_eq!(report["suspended"], json!([org]), "{report}");
    assert_eq!(compute(&server, &org).await["state"], "suspended");
    assert!(!cluster.running(), "the cluster is stopped");

    // tokio-postgres connects while it is down: held, woken, served.
    let started = Instant::now();
    select_one(&info(&server, &org)).await;
    let cold = started.elapsed();
    assert!(cluster.running());
    let state = compute(&server, &org).await;
    assert_eq!(state["state"], "active", "{state}");
    assert_eq!(state["cold_starts"], 1, "{state}");
    eprintln!("cold connect through the proxy (tokio-postgres): {cold:?}");

    // psql, after an operator's suspend.
    let (status, body) = admin_send(
        &server,
        Method::POST,
        &format!("/admin/orgs/{org}/suspend"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "suspended", "{body}");
    assert!(!cluster.running());
    let mut psql = pg::psql(&info(&server, &org), None);
    psql.args(["-c", "SELECT 40 + 2"]);
    let (ok, out, err) = pg::run(psql, Duration::from_secs(20)).await;
    assert!(ok, "psql: {err}");
    assert_eq!(out.trim(), "42");

    // pgbench, suspended again.
    let (status, _) = admin_send(
        &server,
        Method::POST,
        &format!("/admin/orgs/{org}/suspend"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let mut bench = tokio::process::Command::new("pgbench");
    bench
        .args(["-n", "-t", "5", "-c", "2", "-h", "127.0.0.1"])
        .args(["-p", &server.proxy_port().to_string()])
        .args(["-U", &format!("postgres.{org}")])
        .args(["-f", "-"])
        .arg("postgres")
        .kill_on_drop(true);
    // A built-in script needs pgbench's tables; a one-line script does not.
    let (ok, _, err) = run_with_stdin(bench, "SELECT 1;\n").await;
    assert!(ok, "pgbench: {err}");
    assert_eq!(compute(&server, &org).await["cold_starts"], 3);

    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "dynabase_scale_wakes_total{driver=\"local\",outcome=\"ok\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "dynabase_scale_connects_total{tier=\"starter\",start=\"cold\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "{metrics}"
    );
    let (_, report) = admin_get(&server, &format!("/admin/orgs/{org}/usage")).await;
    assert_eq!(report["scale_to_zero"]["cold_starts"], 3, "{report}");
}

async fn run_with_stdin(mut cmd: tokio::process::Command, input: &str) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input.as_bytes())
        .await
        .expect("write stdin");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("finished within 30 s")
        .expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_on_a_suspended_starter_org_get_one_wake_ten_sessions_and_ten_refusals() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path(), &[]);
    let org = create(&server, "starter", &cluster, cluster.local_spec()).await;
    let (status, _) = admin_send(
        &server,
        Method::POST,
        &format!("/admin/orgs/{org}/suspend"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);

    let conninfo = info(&server, &org);
    let clients = (0..20).map(|_| {
        let conninfo = conninfo.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = try_connect(&conninfo).await;
            let elapsed = started.elapsed();
            match result {
                Ok(session) => {
                    session
                        .client
                        .simple_query("SELECT 1")
                        .await
                        .expect("query on a woken database");
                    (Ok(session), elapsed)
                }
                Err(e) => (Err(pg::sqlstate(&e)), elapsed),
            }
        })
    });
    let results = futures_util::future::join_all(clients).await;
    let mut served = Vec::new();
    let mut refused = Vec::new();
    for r in results {
        match r.expect("client task") {
            (Ok(session), t) => served.push((session, t)),
            (Err(code), t) => refused.push((code, t)),
        }
    }
    assert_eq!(served.len(), 10, "refused: {refused:?}");
    assert_eq!(refused.len(), 10);
    assert!(refused.iter().all(|(c, _)| c.as_deref() == Some("53300")));
    let slowest_refusal = refused.iter().map(|(_, t)| *t).max().unwrap();
    let fastest_session = served.iter().map(|(_, t)| *t).min().unwrap();
    eprintln!("refusals within {slowest_refusal:?}; first session after {fastest_session:?}");
    assert!(
        slowest_refusal < fastest_session,
        "refusals come at once, not after the wake"
    );
    let state = compute(&server, &org).await;
    assert_eq!(state["cold_starts"], 1, "one wake: {state}");
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "dynabase_scale_wakes_total{driver=\"local\",outcome=\"ok\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_failing_wake_gives_57p03_and_the_next_connection_retries() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(
        dir.path(),
        &[("DYNABASE__SCALE_TO_ZERO__WAKE_DEADLINE", "300ms")],
    );
    let marker = dir.path().join("wakes");
    // The cluster keeps running; the commands only stand for a slow and a
    // failing platform. Each wake appends a line to `marker`.
    let slow = json!({
        "driver": "command",
        "suspend": "true",
        "wake": format!("echo wake >> {}; sleep 1.5", marker.display()),
        "timeout_ms": 10_000,
    });
    let org = create(&server, "free", &cluster, slow).await;
    let (status, _) = admin_send(
        &server,
        Method::POST,
        &format!("/admin/orgs/{org}/suspend"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);

    // Past the deadline: 57P03 saying the database is starting, with a HINT.
    let started = Instant::now();
    let e = pg::connect_error(&info(&server, &org)).await;
    assert_eq!(e.code().code(), "57P03", "{e:?}");
    assert!(e.message().contains("starting up"), "{}", e.message());
    assert!(e.hint().is_some_and(|h| h.contains("retry")), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(1_200));
    // A second client during the same wake: also 57P03, no second wake.
    let e = pg::connect_error(&info(&server, &org)).await;
    assert_eq!(e.code().code(), "57P03");
    // The wake finishes in the background; then connections are served.
    eventually(Duration::from_secs(10), "the wake to finish", || async {
        (compute(&server, &org).await["state"] == "active").then_some(())
    })
    .await;
    select_one(&info(&server, &org)).await;
    let wakes = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(wakes.lines().count(), 1, "one wake for both clients");

    // A failing driver: 57P03, back to suspended with the error recorded.
    let failing = json!({
        "driver": "command",
        "suspend": "true",
        "wake": "echo 'no capacity' >&2; exit 7",
        "timeout_ms": 5_000,
    });
    let (status, body) = admin_send(
        &server,
        Method::PUT,
        &format!("/admin/orgs/{org}/compute"),
        failing,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = admin_send(
        &server,
        Method::POST,
        &format!("/admin/orgs/{org}/suspend"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let e = pg::connect_error(&info(&server, &org)).await;
    assert_eq!(e.code().code(), "57P03", "{e:?}");
    assert!(
        e.message().contains("could not be started"),
        "{}",
        e.message()
    );
    assert!(
        !e.message().contains("no capacity"),
        "driver output stays private"
    );
    let state = compute(&server, &org).await;
    assert_eq!(state["state"], "suspended", "{state}");
    let error = state["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("exit status: 7") && error.contains("no capacity"),
        "{state}"
    );

    // Fixed driver: the next connection retries and is served.
    let fixed = json!({
        "driver": "command",
        "suspend": "true",
        "wake": "true",
        "timeout_ms": 5_000,
    });
    let (status, _) = admin_send(
        &server,
        Method::PUT,
        &format!("/admin/orgs/{org}/compute"),
        fixed,
    )
    .await;
    assert_eq!(status, 200);
    select_one(&info(&server, &org)).await;
    let state = compute(&server, &org).await;
    assert_eq!(state["state"], "active");
    assert_eq!(state["last_error"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_survives_a_restart_and_customers_can_wake_ahead_of_traffic() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path(), &[]);
    let org = create(&server, "free", &cluster, cluster.local_spec()).await;
    let report = tick(&server, now_ms() + 600_000).await;
    assert_eq!(report["suspended"], json!([org]), "{report}");
    let (status, body) = admin_send(
        &server,
        Method::POST,
        &format!("/admin/orgs/{org}/api-token"),
        json!({}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    drop(server);

    let server = start(dir.path(), &[]);
    assert_eq!(compute(&server, &org).await["state"], "suspended");
    assert!(!cluster.running());

    // POST /v1/wake answers at once; the database comes up behind it.
    let started = Instant::now();
    let r = common::client()
        .post(server.url("/v1/wake"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("POST /v1/wake");
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.expect("json");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(body["state"], "waking", "{body}");
    assert!(body["expected_ready_at"].as_i64().is_some(), "{body}");
    assert!(body.get("last_error").is_none(), "operators only");
    eventually(Duration::from_secs(10), "the woken database", || async {
        (compute(&server, &org).await["state"] == "active").then_some(())
    })
    .await;
    assert!(cluster.running());
    select_one(&info(&server, &org)).await;

    // PRO does not scale to zero, whatever its driver.
    let pro = create(&server, "pro", &cluster, cluster.local_spec()).await;
    let report = tick(&server, now_ms() + 6_000_000).await;
    assert!(
        !report["suspended"]
            .as_array()
            .is_some_and(|s| s.iter().any(|o| o == &json!(pro))),
        "{report}"
    );
}
