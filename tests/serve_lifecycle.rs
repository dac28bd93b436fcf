//! The binary as an operator runs it: start, restart, stop, configcheck.

mod common;

use std::time::Duration;

use common::{admin_get, client, command, Server, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn an_organization_survives_a_restart_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = client();
    let health = http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let created = http
        .post(server.url("/admin/orgs"))
        .bearer_auth(ADMIN_TOKEN)
        .body(r#"{"id":"acme","name":"Acme","tier":"starter","upstream":"127.0.0.1:5432"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);

    // The shutdown deadline is 5 s in tests; exit must come within it.
    let status = server
        .terminate(Duration::from_secs(5))
        .expect("exited within the shutdown deadline");
    assert!(status.success(), "SIGTERM exit status: {status:?}");

    let again = Server::start(dir.path(), &[]);
    let (_, org) = admin_get(&again, "/admin/orgs/acme").await;
    assert_eq!(org["tier"], "starter");
}

#[test]
fn serve_refuses_to_start_without_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path()).arg("serve").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin_token is empty"), "{stderr}");
}

#[tokio::test]
async fn development_mode_generates_and_prints_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::spawn(command(dir.path()).args(["serve", "--dev"]));
    let token = server
        .wait_for_line("dynabase: development mode; admin token for this run: ")
        .expect("token printed");
    let r = client()
        .get(server.url("/admin/orgs"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[test]
fn configcheck_reports_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("broken.toml"),
        "[proxy]\nport = 6432\nlisten_backlog = 5\n\n[tiers.free]\nmax_connections = -5\n",
    )
    .unwrap();
    let out = command(dir.path())
        .env("DYNABASE_CONFIG_DIR", config.path())
        .env("DYNABASE_ENV", "broken")
        .arg("configcheck")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("proxy.listen_backlog: unknown key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tiers.free.max_connections: must be at least 1, got -5"),
        "{stderr}"
    );

    let ok = command(dir.path()).arg("configcheck").output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test]
async fn serves_from_mongodb_and_checks_redis_when_configured() {
    let Some(mongo) =
        common::require_service("DYNABASE_TEST_MONGODB_URL", "mongodb://127.0.0.1:27017")
    else {
        return;
    };
    let Some(redis) = common::require_service("DYNABASE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let database = format!("dynabase_serve_{}", std::process::id());
    let env = [
        ("MONGODB_URL", mongo.as_str()),
        ("DYNABASE__STORE__MONGODB_DATABASE", database.as_str()),
        ("REDIS_URL", redis.as_str()),
    ];
    let server = Server::start(dir.path(), &env);
    let http = client();
    let ready: Value = http
        .get(server.url("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["store_kind"], "mongodb");
    assert_eq!(ready["redis"], "ok");

    let created = http
        .post(server.url("/admin/orgs"))
        .bearer_auth(ADMIN_TOKEN)
        .body(r#"{"id":"mongo-org","name":"M","tier":"pro","upstream":"127.0.0.1:5432"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    drop(server);

    // A second process on the same database sees it.
    let again = Server::start(dir.path(), &env);
    let (_, org) = admin_get(&again, "/admin/orgs/mongo-org").await;
    assert_eq!(org["tier"], "pro");
}

#[tokio::test]
async fn ready_reports_an_unreachable_redis() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("REDIS_URL", "redis://127.0.0.1:1")]);
    let r = client().get(server.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["redis"], "unreachable");
    assert_eq!(body["store"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("stderr.log");
    let mut cmd = command(dir.path());
    cmd.env("DYNABASE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("DYNABASE__LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut child = cmd.arg("serve").spawn().expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("dynabase is serving")
    {
        assert!(std::time::Instant::now() < deadline, "never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).expect("log");
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
    }
    assert!(
        stderr.contains("\"store\":\"embedded\""),
        "fields are JSON fields: {stderr}"
    );
}
