//! The Grafana dashboards (`deploy/grafana/dashboards/*.json`) against a
//! real Prometheus: it scrapes the running binary while traffic goes
//! through the proxy, and every panel's query must parse and return data.

mod common;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{admin_send, client, pg, Server};
use serde_json::{json, Value};

/// Prometheus from Debian's package (scripts/services.sh installs it).
fn prometheus_binary() -> Option<PathBuf> {
    let found = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI requires Prometheus (Debian's prometheus package; scripts/services.sh installs it)"
        );
        eprintln!("SKIP: no prometheus binary");
    }
    found
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Every `expr` of every panel of every dashboard, with where it is.
fn panel_queries() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards folder") {
        let path = entry.expect("entry").path();
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                out.push((
                    format!(
                        "{} / {}",
                        path.file_name().unwrap().to_string_lossy(),
                        panel["title"]
                    ),
                    target["expr"].as_str().expect("expr").to_owned(),
                ));
            }
        }
    }
    assert!(out.len() >= 20, "five dashboards of four panels");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let (Some(bin), Some(upstream)) = (prometheus_binary(), pg::pg_service()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(
        dir.path(),
        &[
            ("DYNABASE__USAGE__FLUSH_INTERVAL", "200ms"),
            ("DYNABASE__LIFECYCLE__ALLOW_CLOCK_OVERRIDE", "true"),
        ],
    );
    let http = server.base.trim_start_matches("http://").to_owned();
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dynabase\n    static_configs:\n      - targets: ['{http}']\n"
        ),
    )
    .expect("config");
    let _prometheus = Prometheus(
        Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

    // Traffic: sessions and queries on two tiers, refusals, a tier change,
    // an adjustment, a billing run and a calibration.
    let (user, password) = pg::superuser();
    for (org, tier) in [
        (pg::unique_org("dash-pro"), "pro"),
        (pg::unique_org("dash-free"), "free"),
    ] {
        pg::create_org(&server, &org, tier, &upstream).await;
        let info = pg::conninfo(
            &server,
            &format!("{user}.{org}"),
            "postgres",
            Some(&password),
        );
        let s = pg::connect(&info).await;
        for _ in 0..20 {
            s.client.simple_query("SELECT 1").await.expect("query");
        }
        let _ = pg::try_connect(&pg::conninfo(
            &server,
            &format!("{user}.nobody-{org}"),
            "postgres",
            Some(&password),
        ))
        .await;
        let (status, _) = admin_send(
            &server,
            reqwest::Method::POST,
            &format!("/admin/orgs/{org}/usage/adjustments"),
            json!({ "vcpu_hours": "0.5", "reason": "dashboard test" }),
        )
        .await;
        assert_eq!(status, 201);
        let (status, _) = admin_send(
            &server,
            reqwest::Method::PUT,
            &format!("/admin/orgs/{org}/tier"),
            json!({ "tier": "starter", "reason": "dashboard test" }),
        )
        .await;
        assert_eq!(status, 200);
        drop(s);
    }
    let (status, body) = admin_send(
        &server,
        reqwest::Method::POST,
        "/admin/billing/run?period=2020-01",
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin_send(
        &server,
        reqwest::Method::POST,
        "/admin/calibrations",
        json!({ "period": "2020-01", "bill_usd": "10.00" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // Several scrapes after the traffic, so rate() has two samples.
    let api = format!("http://127.0.0.1:{port}/api/v1/query");
    let queries = panel_queries();
    let mut missing = Vec::new();
    for attempt in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        missing.clear();
        for (where_, expr) in &queries {
            let url = reqwest::Url::parse_with_params(&api, &[("query", expr)]).expect("url");
            let answer: Value = match client().get(url).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            assert_ne!(
                answer["status"], "error",
                "{where_}: `{expr}` does not parse: {answer}"
            );
            if answer["data"]["result"]
                .as_array()
                .is_none_or(Vec::is_empty)
            {
                missing.push(format!("{where_}: {expr}"));
            }
        }
        if missing.is_empty() {
            eprintln!("every panel answered after {} s", (attempt + 1) / 2);
            return;
        }
    }
    panic!("panels without data after 20 s:\n{}", missing.join("\n"));
}
