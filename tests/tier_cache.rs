//! The tier verification flow across replicas and failures, against real
//! services: two replicas on one MongoDB-wire database and one Redis enforce
//! a tier change within a second; with Redis stopped admissions read the
//! store; with the MongoDB-wire server stopped cached tiers keep admitting,
//! and the staleness shows in `/ready` and the metrics.
//!
//! The shared services come from `scripts/services.sh`; the tests that stop
//! a service run their own `redis-server` or FerretDB on a free port.

mod common;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{admin_get, admin_send, stripe::create_org, Server};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls};

/// FREE at 1 query/s, no burst, no queueing: refusals are deterministic.
const STRICT: [(&str, &str); 3] = [
    ("DYNABASE__TIERS__FREE__QPS", "1"),
    ("DYNABASE__TIERS__FREE__BURST", "1"),
    ("DYNABASE__LIMITS__MAX_QUEUE_DELAY", "0ms"),
];

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}_{}_{nanos}", std::process::id())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A service process of this test; killed when dropped.
struct Service(Child);

impl Service {
    fn spawn(cmd: &mut Command, port: u16) -> Service {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let service = Service(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !port_open(port) {
            assert!(
                Instant::now() < deadline,
                "{cmd:?} did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }

    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server(port: u16) -> Service {
    Service::spawn(
        Command::new("redis-server").args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]),
        port,
    )
}

/// The FerretDB binary `scripts/services.sh` built or found, if any.
fn ferretdb_binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var("DYNABASE_TEST_FERRETDB_BIN")
            .ok()
            .map(PathBuf::from),
        std::env::var("DYNABASE_SERVICES_DIR")
            .ok()
            .map(|d| Path::new(&d).join("bin/ferretdb")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(".services/bin/ferretdb")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

fn ferretdb(bin: &Path, port: u16, dir: &Path) -> Service {
    let data = dir.join("data");
    let state = dir.join("state");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::create_dir_all(&state).expect("state dir");
    Service::spawn(
        Command::new(bin)
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .arg("--handler=sqlite")
            .arg(format!("--sqlite-url=file:{}/", data.display()))
            .arg(format!("--state-dir={}", state.display()))
            .arg("--debug-addr=-")
            .arg("--telemetry=disable")
            .arg("--log-level=error")
            .env("FERRETDB_TELEMETRY", "disable")
            .env("DO_NOT_TRACK", "1"),
        port,
    )
}

fn pg() -> Option<String> {
    common::require_service("DYNABASE_TEST_PG_ADDR", "127.0.0.1:5432")
}

fn mongo() -> Option<String> {
    common::require_service("DYNABASE_TEST_MONGODB_URL", "mongodb://127.0.0.1:27017")
}

fn redis() -> Option<String> {
    common::require_service("DYNABASE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

/// Environment of a replica on `mongo_url`/`database` and `redis_url`.
fn replica_env<'a>(
    mongo_url: &'a str,
    database: &'a str,
    redis_url: &'a str,
    prefix: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("MONGODB_URL", mongo_url),
        ("DYNABASE__STORE__MONGODB_DATABASE", database),
        ("REDIS_URL", redis_url),
        ("DYNABASE__REDIS__KEY_PREFIX", prefix),
    ]
}

async fn connect(server: &Server, org: &str) -> Result<Client, tokio_postgres::Error> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=trust_user.{org} dbname=postgres connect_timeout=10",
        server.proxy_port()
    );
    let (c, conn) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

async fn ready(server: &Server) -> (u16, Value) {
    let r = common::client()
        .get(server.url("/ready"))
        .send()
        .await
        .expect("/ready");
    (r.status().as_u16(), r.json().await.expect("JSON"))
}

/// Polls `/ready` until `check` holds, for up to `limit`.
async fn wait_ready(server: &Server, limit: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (_, body) = ready(server).await;
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "/ready never matched: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether 20 queries sent at once on `c` all pass (not rate-limited).
async fn twenty_pass(c: &Client) -> bool {
    join_all((0..20).map(|_| c.query_one("select 1", &[])))
        .await
        .iter()
        .all(Result::is_ok)
}

async fn set_tier(server: &Server, org: &str, tier: &str) {
    let (status, body) = admin_send(
        server,
        Method::PUT,
        &format!("/admin/orgs/{org}/tier"),
        json!({"tier": tier, "reason": "test"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn two_replicas_enforce_a_new_tier_within_a_second() {
    let (Some(pg), Some(mongo_url), Some(redis_url)) = (pg(), mongo(), redis()) else {
        return;
    };
    let (database, prefix) = (unique("dynabase_replicas"), unique("replicas"));
    let mut env = replica_env(&mongo_url, &database, &redis_url, &prefix);
    env.extend(STRICT);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start(dir_a.path(), &env);
    let b = Server::start(dir_b.path(), &env);
    wait_ready(&b, Duration::from_secs(10), |r| {
        r["tiers"]["invalidations"] == "subscribed"
    })
    .await;
    create_org(&a, "twin", "free", &pg, None).await;

    // A session on replica B, at FREE's 1 query/s.
    let on_b = connect(&b, "twin").await.expect("connect to B");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!twenty_pass(&on_b).await, "FREE refuses most of 20 at once");

    for (tier, expect_pass) in [("pro", true), ("free", false)] {
        // The change is made on replica A; B must enforce it within 1 s.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let changed = Instant::now();
        set_tier(&a, "twin", tier).await;
        loop {
            if twenty_pass(&on_b).await == expect_pass {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "replica B does not enforce {tier} 1 s after the change on A"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("replica B enforced {tier} after {:?}", changed.elapsed());
    }
    // The cache entry was refreshed from the store, not left stale.
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let cached: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}:tier:twin"))
        .query_async(&mut redis)
        .await
        .expect("GET");
    if let Some(json) = cached {
        let org: Value = serde_json::from_str(&json).expect("cached JSON");
        assert_eq!(org["tier"], "free", "{org}");
    }
    drop((a, b));
    drop_database(&mongo_url, &database).await;
}

#[tokio::test]
async fn with_redis_stopped_admissions_read_the_store() {
    let (Some(pg), Some(mongo_url)) = (pg(), mongo()) else {
        return;
    };
    let port = free_port();
    let own_redis = redis_server(port);
    let redis_url = format!("redis://127.0.0.1:{port}");
    let (database, prefix) = (unique("dynabase_noredis"), unique("noredis"));
    let env = replica_env(&mongo_url, &database, &redis_url, &prefix);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &env);
    wait_ready(&server, Duration::from_secs(10), |r| {
        r["tiers"]["invalidations"] == "subscribed"
    })
    .await;
    for org in ["warm", "cold", "moved"] {
        create_org(&server, org, "free", &pg, None).await;
    }
    connect(&server, "warm")
        .await
        .expect("connect with Redis up");

    own_redis.stop();
    let (status, body) = ready(&server).await;
    assert_eq!(status, 503, "Redis is down: not ready ({body})");

    // A running tenant answers from the process; a cold one from the store.
    for org in ["warm", "cold"] {
        let started = Instant::now();
        let c = connect(&server, org).await.expect("admitted without Redis");
        c.simple_query("select 1").await.expect("query");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{org}: admission took {:?} with Redis down",
            started.elapsed()
        );
    }
    // Tier changes still apply (the announcement is retried later).
    set_tier(&server, "moved", "starter").await;
    let (_, org) = admin_get(&server, "/admin/orgs/moved").await;
    assert_eq!(org["tier"], "starter");
    let c = connect(&server, "moved").await.expect("admitted");
    c.simple_query("select 1").await.expect("query");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("dynabase_tier_cache_errors_total"),
        "cache errors are counted"
    );
    assert!(metrics.contains(r#"dynabase_tier_lookups_total{layer="store"}"#));

    // Redis back: the replica subscribes again by itself.
    let _own_redis = redis_server(port);
    wait_ready(&server, Duration::from_secs(15), |r| {
        r["redis"] == "ok" && r["tiers"]["invalidations"] == "subscribed"
    })
    .await;
    drop(server);
    drop_database(&mongo_url, &database).await;
}

#[tokio::test]
async fn with_the_store_stopped_cached_tiers_keep_admitting() {
    let (Some(pg), Some(redis_url)) = (pg(), redis()) else {
        return;
    };
    let Some(bin) = ferretdb_binary() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI requires a FerretDB binary (scripts/services.sh start builds one)");
        }
        eprintln!("SKIP: no FerretDB binary; set DYNABASE_TEST_FERRETDB_BIN");
        return;
    };
    let port = free_port();
    let ferret_dir = tempfile::tempdir().unwrap();
    let own_store = ferretdb(&bin, port, ferret_dir.path());
    let mongo_url = format!("mongodb://127.0.0.1:{port}");
    let (database, prefix) = (unique("dynabase_nostore"), unique("nostore"));
    let mut env = replica_env(&mongo_url, &database, &redis_url, &prefix);
    env.extend([
        ("DYNABASE__TIER_CACHE__TTL", "4s"),
        ("DYNABASE__TIER_CACHE__REFRESH_INTERVAL", "1s"),
    ]);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start(dir_a.path(), &env);
    let b = Server::start(dir_b.path(), &env);
    create_org(&a, "kept", "starter", &pg, None).await;
    create_org(&a, "shared", "starter", &pg, None).await;
    // Replica A runs both tenants; the lookups put them in Redis.
    let kept = connect(&a, "kept").await.expect("connect");
    drop(connect(&a, "shared").await.expect("connect"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    own_store.stop();
    // A: from its own tenant actor. B, which never saw "shared": from Redis.
    connect(&a, "kept")
        .await
        .expect("A admits from process state")
        .simple_query("select 1")
        .await
        .expect("query");
    connect(&b, "shared")
        .await
        .expect("B admits from the Redis cache")
        .simple_query("select 1")
        .await
        .expect("query");

    // Once the cache entry expires, re-verification fails: the tier is
    // stale, visibly, and still used.
    let body = wait_ready(&a, Duration::from_secs(30), |r| {
        r["tiers"]["stale_tenants"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    assert_ne!(body["store"], "ok", "{body}");
    assert!(body["tiers"]["stale_since"].is_i64(), "{body}");
    let metrics = a.metrics().await;
    let stale = metrics
        .lines()
        .find(|l| l.starts_with("dynabase_tier_stale_tenants "))
        .unwrap_or_default();
    assert!(
        !stale.ends_with(" 0"),
        "stale tenants in metrics: {stale:?}"
    );
    connect(&a, "kept")
        .await
        .expect("a stale tier still admits")
        .simple_query("select 1")
        .await
        .expect("query");
    kept.simple_query("select 1")
        .await
        .expect("open session unaffected");

    // The store back: re-verification succeeds and the staleness clears.
    let _own_store = ferretdb(&bin, port, ferret_dir.path());
    wait_ready(&a, Duration::from_secs(30), |r| {
        r["tiers"]["stale_tenants"] == 0
    })
    .await;
}

async fn drop_database(url: &str, database: &str) {
    if let Ok(client) = mongodb::Client::with_uri_str(url).await {
        let _ = client.database(database).drop().await;
    }
}
