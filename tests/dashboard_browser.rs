//! The customer dashboard in a real browser: headless Chromium (Debian's
//! package) driven by Selenium (`tests/browser/dashboard_check.py`) signs in
//! with the org's API token and compares every figure on the page with
//! `GET /v1/usage`; a wrong token is refused, and another org's token shows
//! that org alone. Screenshots (desktop and
//! phone widths) go to `target/dashboard-screenshots/`.

mod common;

use std::{path::Path, time::Duration};

use common::{admin_send, pg, Server};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_same_numbers_as_the_api() {
    let python = std::env::var("DYNABASE_TEST_BROWSER_PYTHON").ok();
    let browser =
        Path::new("/usr/bin/chromium").is_file() && Path::new("/usr/bin/chromedriver").is_file();
    let (Some(python), true, Some(upstream)) = (python, browser, pg::pg_service()) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI requires Chromium, chromedriver and the Selenium venv (scripts/services.sh start)"
        );
        eprintln!("SKIP: no browser environment; run scripts/services.sh start");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &[("DYNABASE__USAGE__FLUSH_INTERVAL", "200ms")]);
    let org = pg::unique_org("dash");
    pg::create_org(&server, &org, "starter", &upstream).await;
    let (user, password) = pg::superuser();
    for db in ["postgres", "template1"] {
        let s = pg::connect(&pg::conninfo(
            &server,
            &format!("{user}.{org}"),
            db,
            Some(&password),
        ))
        .await;
        s.client
            .simple_query("SELECT pg_sleep(0.05)")
            .await
            .expect("query");
    }
    let (status, body) = admin_send(
        &server,
        reqwest::Method::POST,
        &format!("/admin/orgs/{org}/usage/adjustments"),
        json!({ "vcpu_hours": "30", "reason": "so there is an overage to show" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin_send(
        &server,
        reqwest::Method::POST,
        &format!("/admin/orgs/{org}/api-token"),
        json!({}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let other_org = pg::unique_org("dash-other");
    pg::create_org(&server, &other_org, "free", &upstream).await;
    let (status, body) = admin_send(
        &server,
        reqwest::Method::POST,
        &format!("/admin/orgs/{other_org}/api-token"),
        json!({}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let other_token = body["token"].as_str().expect("token").to_owned();
    // Both databases' usage written.
    pg::eventually(
        Duration::from_secs(10),
        "usage for two databases",
        || async {
            let (_, r) = common::admin_get(&server, &format!("/admin/orgs/{org}/usage")).await;
            (r["by_database"].as_array().map(Vec::len) == Some(2)).then_some(())
        },
    )
    .await;
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard_check.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(&server.base)
        .arg(&token)
        .arg(&other_token)
        .arg(&shots)
        .output()
        .await
        .expect("run the browser check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the browser check failed:\n{stdout}"
    );
    assert!(!stdout.contains(&token), "the token was printed");
}
