//! Multi-replica rate-limit accuracy: starts 1, 2 and 3 `dynabase` replicas
//! on one Redis and one MongoDB, drives one organization per tier above its
//! limit from every replica, and prints a markdown table of admitted QPS and
//! Redis calls per 1,000 admitted queries.
//!
//! `cargo run --release -p dynabase-load-tests --bin replica_accuracy -- [path/to/dynabase]`
//! with the services of `scripts/services.sh` running.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use tokio_postgres::{Client, NoTls};

const TOKEN: &str = "bench-token";
const WARM_UP: Duration = Duration::from_secs(4);
const WINDOW: Duration = Duration::from_secs(10);

struct Replica {
    child: Child,
    http: String,
    proxy_port: u16,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn start(binary: &str, index: usize, database: &str, prefix: &str) -> Replica {
    let dir = std::env::temp_dir().join(format!("replica-accuracy-{}-{index}", std::process::id()));
    let mut child = Command::new(binary)
        .arg("serve")
        .env("DYNABASE_ADMIN_TOKEN", TOKEN)
        .env("PORT", "0")
        .env("DYNABASE__HTTP__HOST", "127.0.0.1")
        .env("DYNABASE__PROXY__HOST", "127.0.0.1")
        .env("DYNABASE__PROXY__PORT", "0")
        .env("DYNABASE__STORE__DATA_DIR", &dir)
        .env(
            "MONGODB_URL",
            env("DYNABASE_TEST_MONGODB_URL", "mongodb://127.0.0.1:27017"),
        )
        .env("DYNABASE__STORE__MONGODB_DATABASE", database)
        .env(
            "REDIS_URL",
            env("DYNABASE_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
        )
        .env("DYNABASE__REDIS__KEY_PREFIX", prefix)
        .env("DYNABASE__REPLICA__ID", format!("r{index}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start dynabase");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut http, mut proxy) = (String::new(), 0);
    while let Some(Ok(line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("dynabase: HTTP API listening on ") {
            http = rest.trim().to_owned();
        }
        if let Some(rest) = line.strip_prefix("dynabase: PostgreSQL proxy listening on ") {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            proxy = addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Replica {
        child,
        http,
        proxy_port: proxy,
    }
}

async fn metrics(http: &reqwest::Client, r: &Replica) -> HashMap<String, f64> {
    let text = http
        .get(format!("{}/metrics", r.http))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("dynabase_redis_calls_total{"))
        .filter_map(|l| {
            let op = l.split("op=\"").nth(1)?.split('"').next()?.to_owned();
            let v = l.rsplit(' ').next()?.parse().ok()?;
            Some((op, v))
        })
        .collect()
}

async fn connect(r: &Replica, org: &str) -> Client {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=trust_user.{org} dbname=postgres",
        r.proxy_port
    );
    let (c, conn) = tokio_postgres::connect(&conninfo, NoTls)
        .await
        .expect("connect through the proxy");
    tokio::spawn(conn);
    c
}

async fn drive(c: Client, window: std::ops::Range<Instant>) -> u32 {
    let statement = loop {
        match c.prepare("select 1").await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut ok = 0;
    while Instant::now() < window.end {
        match c.query_one(&statement, &[]).await {
            Ok(_) if window.contains(&Instant::now()) => ok += 1,
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    ok
}

#[tokio::main]
async fn main() {
    let binary = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/dynabase".to_owned());
    let pg = env("DYNABASE_TEST_PG_ADDR", "127.0.0.1:5432");
    let http = reqwest::Client::new();
    let tiers = [("free", 10u32, 1usize), ("starter", 50, 2), ("pro", 200, 4)];
    println!("| tier | limit (QPS) | replicas | admitted QPS | error | org Redis calls / 1,000 queries | heartbeats / 1,000 queries |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for replicas in 1..=3 {
        for (tier, qps, connections) in tiers {
            let tag = format!("{}_{tier}_{replicas}", std::process::id());
            let nodes: Vec<Replica> = (0..replicas)
                .map(|i| start(&binary, i, &format!("acc_{tag}"), &format!("acc_{tag}")))
                .collect();
            tokio::time::sleep(Duration::from_secs(3)).await; // heartbeats meet
            let org = format!("acc-{tier}-{replicas}");
            let created = http
                .post(format!("{}/admin/orgs", nodes[0].http))
                .bearer_auth(TOKEN)
                .body(format!(
                    r#"{{"id":"{org}","name":"{org}","tier":"{tier}","upstream":"{pg}"}}"#
                ))
                .send()
                .await
                .expect("create org");
            assert!(
                created.status().is_success(),
                "create org: {}",
                created.status()
            );
            let start = Instant::now();
            let window = (start + WARM_UP)..(start + WARM_UP + WINDOW);
            let mut drivers = Vec::new();
            for node in &nodes {
                for _ in 0..connections {
                    drivers.push(tokio::spawn(drive(
                        connect(node, &org).await,
                        window.clone(),
                    )));
                }
            }
            tokio::time::sleep_until(window.start.into()).await;
            let before = join_all(nodes.iter().map(|n| metrics(&http, n))).await;
            tokio::time::sleep_until(window.end.into()).await;
            let after = join_all(nodes.iter().map(|n| metrics(&http, n))).await;
            let admitted: u32 = join_all(drivers)
                .await
                .into_iter()
                .map(|r| r.unwrap_or(0))
                .sum();
            let calls = |pick: &dyn Fn(&str) -> bool| -> f64 {
                before
                    .iter()
                    .zip(&after)
                    .map(|(b, a)| {
                        a.iter()
                            .filter(|(op, _)| pick(op))
                            .map(|(op, v)| v - b.get(op).copied().unwrap_or(0.0))
                            .sum::<f64>()
                    })
                    .sum()
            };
            let org_calls = calls(&|op| op != "heartbeat");
            let heartbeats = calls(&|op| op == "heartbeat");
            let rate = f64::from(admitted) / WINDOW.as_secs_f64();
            let error = (rate - f64::from(qps)) / f64::from(qps) * 100.0;
            let per_k = |c: f64| {
                if admitted == 0 {
                    0.0
                } else {
                    c * 1000.0 / f64::from(admitted)
                }
            };
            println!(
                "| {tier} | {qps} | {replicas} | {rate:.1} | {error:+.1}% | {:.1} | {:.1} |",
                per_k(org_calls),
                per_k(heartbeats)
            );
        }
    }
}
