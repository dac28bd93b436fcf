//! Several proxy processes on one Redis and one MongoDB: org-wide connection
//! and query-rate limits hold across them, a killed replica's slots come
//! back, and losing Redis degrades to local shares and recovers.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::Server;
use futures_util::future::join_all;
use tokio_postgres::{error::SqlState, Client, NoTls};

/// These tests start up to three servers each and measure rates: run them one
/// at a time so they do not starve each other of the machine's CPU.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Services {
    pg: String,
    mongo: String,
    redis: String,
}

fn services() -> Option<Services> {
    Some(Services {
        pg: common::require_service("DYNABASE_TEST_PG_ADDR", "127.0.0.1:5432")?,
        mongo: common::require_service("DYNABASE_TEST_MONGODB_URL", "mongodb://127.0.0.1:27017")?,
        redis: common::require_service("DYNABASE_TEST_REDIS_URL", "redis://127.0.0.1:6379")?,
    })
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}_{}_{nanos}", std::process::id())
}

/// `n` replicas sharing one MongoDB database and one Redis key prefix.
fn replicas(
    n: usize,
    s: &Services,
    redis_url: &str,
    extra: &[(&str, &str)],
) -> (Vec<Server>, Vec<tempfile::TempDir>) {
    let database = unique("replicas");
    let prefix = unique("rl");
    let mut servers = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let replica = format!("r{i}");
        let mut env = vec![
            ("MONGODB_URL", s.mongo.as_str()),
            ("DYNABASE__STORE__MONGODB_DATABASE", database.as_str()),
            ("REDIS_URL", redis_url),
            ("DYNABASE__REDIS__KEY_PREFIX", prefix.as_str()),
            ("DYNABASE__REPLICA__ID", replica.as_str()),
            ("DYNABASE__LIMITS__SYNC_INTERVAL", "1s"),
        ];
        env.extend_from_slice(extra);
        servers.push(Server::start(dir.path(), &env));
        dirs.push(dir);
    }
    (servers, dirs)
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

fn refused_for_limit(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::TOO_MANY_CONNECTIONS)
}

/// Waits until every replica has seen the others' heartbeats.
async fn wait_for_replicas(servers: &[Server], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for s in servers {
        loop {
            let text = s.metrics().await;
            let seen = text
                .lines()
                .find_map(|l| l.strip_prefix("dynabase_replicas "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            let degraded = text
                .lines()
                .any(|l| l.trim() == "dynabase_redis_degraded 1");
            if seen as usize >= n && !degraded {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not see each other: {seen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn the_connection_limit_is_exact_across_three_replicas_under_a_storm() {
    let _serial = SERIAL.lock().await;
    let Some(s) = services() else { return };
    let (servers, _dirs) = replicas(3, &s, &s.redis, &[]);
    wait_for_replicas(&servers, 3).await;
    common::pg::create_org(&servers[0], "storm", "free", &s.pg).await;

    // 3 × the FREE limit of 5, spread over the replicas, all at once.
    let attempts = join_all((0..15).map(|i| connect(&servers[i % 3], "storm"))).await;
    let admitted = attempts.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 5, "exactly the org-wide limit is admitted");
    for e in attempts.iter().filter_map(|r| r.as_ref().err()) {
        assert!(refused_for_limit(e), "refused with 53300: {e}");
    }
}

#[tokio::test]
async fn query_rates_hold_within_5_percent_across_three_replicas() {
    let _serial = SERIAL.lock().await;
    let Some(s) = services() else { return };
    let (servers, _dirs) = replicas(3, &s, &s.redis, &[]);
    wait_for_replicas(&servers, 3).await;
    let tiers = [
        ("rfree", "free", 10u32, 1usize),
        ("rstarter", "starter", 50, 2),
        ("rpro", "pro", 200, 4),
    ];
    for (org, tier, _, _) in tiers {
        common::pg::create_org(&servers[0], org, tier, &s.pg).await;
    }
    // Closed-loop clients on every replica, more than each tier allows.
    let start = Instant::now();
    let window = (start + Duration::from_secs(4))..(start + Duration::from_secs(14));
    let mut drivers = Vec::new();
    for (org, _, _, per_replica) in tiers {
        for server in &servers {
            for _ in 0..per_replica {
                let c = connect(server, org).await.expect("connect");
                let window = window.clone();
                drivers.push(tokio::spawn(async move { (org, drive(c, window).await) }));
            }
        }
    }
    let mut admitted = std::collections::HashMap::<&str, u32>::new();
    for d in join_all(drivers).await {
        let (org, ok) = d.unwrap();
        *admitted.entry(org).or_default() += ok;
    }
    for (org, tier, qps, _) in tiers {
        let got = f64::from(admitted[org]) / 10.0;
        let error = (got - f64::from(qps)).abs() / f64::from(qps);
        assert!(
            error <= 0.05,
            "{tier}: {got} queries/s admitted for a limit of {qps} ({:.1}% off)",
            error * 100.0
        );
    }
}

/// Runs a prepared query in a closed loop; counts the answers inside the window.
async fn drive(c: Client, window: std::ops::Range<Instant>) -> u32 {
    let statement = loop {
        match c.prepare("select 1").await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut ok = 0;
    while Instant::now() < window.end {
        let result = c.query_one(&statement, &[]).await;
        let inside = window.contains(&Instant::now());
        match result {
            Ok(_) if inside => ok += 1,
            Ok(_) => {}
            // Refused: back off a little instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    ok
}

#[tokio::test]
async fn a_killed_replica_frees_its_slots_within_15_seconds() {
    let _serial = SERIAL.lock().await;
    let Some(s) = services() else { return };
    let (mut servers, _dirs) = replicas(2, &s, &s.redis, &[("DYNABASE__LIMITS__LEASE_TTL", "10s")]);
    wait_for_replicas(&servers, 2).await;
    common::pg::create_org(&servers[0], "killed", "free", &s.pg).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&servers[0], "killed").await.expect("connect"));
    }
    for _ in 0..2 {
        held.push(connect(&servers[1], "killed").await.expect("connect"));
    }
    assert!(
        connect(&servers[1], "killed").await.is_err(),
        "the org is full"
    );

    let victim = servers.remove(0);
    let mut child = victim.into_child();
    child.kill().unwrap(); // SIGKILL: no chance to return its leases
    child.wait().unwrap();
    let killed_at = Instant::now();

    let survivor = &servers[0];
    let mut admitted = Vec::new();
    while admitted.len() < 3 {
        match connect(survivor, "killed").await {
            Ok(c) => admitted.push(c),
            Err(e) => {
                assert!(refused_for_limit(&e), "{e}");
                assert!(
                    killed_at.elapsed() < Duration::from_secs(15),
                    "slots not freed within 15 s"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    assert!(
        connect(survivor, "killed").await.is_err(),
        "still never above the limit"
    );
}

/// A redis-server of this test's own, so it can be stopped and started.
struct OwnRedis {
    child: Option<Child>,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn degraded(server: &Server) -> bool {
    let text = server.metrics().await;
    text.lines()
        .any(|l| l.trim() == "dynabase_redis_degraded 1")
}

#[tokio::test]
async fn losing_redis_falls_back_to_local_shares_and_recovers() {
    let _serial = SERIAL.lock().await;
    let Some(s) = services() else { return };
    let port = free_port();
    let mut redis = OwnRedis::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    let (servers, _dirs) = replicas(2, &s, &url, &[]);
    wait_for_replicas(&servers, 2).await;
    common::pg::create_org(&servers[0], "fallback", "pro", &s.pg).await;
    let before = connect(&servers[0], "fallback")
        .await
        .expect("shared limits admit");
    before.simple_query("select 1").await.unwrap();

    redis.stop();
    // Still serving: new connections and queries work on local shares.
    let during = connect(&servers[1], "fallback")
        .await
        .expect("admitted while Redis is down");
    during
        .simple_query("select 1")
        .await
        .expect("queries run while Redis is down");
    before
        .simple_query("select 1")
        .await
        .expect("open sessions keep working");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !degraded(&servers[1]).await {
        assert!(
            Instant::now() < deadline,
            "degradation is visible in metrics"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // PRO allows 50; each of the 2 replicas now admits its local share, 25.
    let mut local = Vec::new();
    while let Ok(c) = connect(&servers[0], "fallback").await {
        local.push(c);
        assert!(local.len() <= 25, "a replica admits at most its share");
    }
    assert_eq!(local.len(), 24, "25 including the session opened before");

    let _redis = OwnRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    for server in &servers {
        while degraded(server).await {
            assert!(Instant::now() < deadline, "shared limits return with Redis");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(local);
    connect(&servers[1], "fallback")
        .await
        .expect("admitted on shared limits again");
}

/// Sessions admitted on local shares while Redis was down count against the
/// org-wide limit once it is back (found by `load-tests/soak.sh`: after a
/// Redis restart a FREE org held 6 sessions, the replicas having admitted on
/// shared limits that knew nothing of the sessions admitted meanwhile).
#[tokio::test]
async fn sessions_admitted_while_redis_was_down_count_once_it_is_back() {
    let _serial = SERIAL.lock().await;
    let Some(s) = services() else { return };
    let port = free_port();
    let mut redis = OwnRedis::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    let (servers, _dirs) = replicas(2, &s, &url, &[]);
    wait_for_replicas(&servers, 2).await;
    common::pg::create_org(&servers[0], "outage", "free", &s.pg).await;
    for server in &servers {
        connect(server, "outage")
            .await
            .expect("admitted on shared limits")
            .simple_query("select 1")
            .await
            .unwrap();
    }

    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    for server in &servers {
        while !degraded(server).await {
            assert!(Instant::now() < deadline, "both replicas notice");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // FREE admits 5: each of the 2 replicas its local share, 2.
    let mut open = Vec::new();
    for server in &servers {
        for _ in 0..2 {
            open.push(connect(server, "outage").await.expect("local share"));
        }
        assert!(
            connect(server, "outage").await.is_err(),
            "a replica admits at most its share"
        );
    }

    let _redis = OwnRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    for server in &servers {
        while degraded(server).await {
            assert!(Instant::now() < deadline, "shared limits return with Redis");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The 4 sessions admitted during the outage are still open: one more fits.
    let mut more = Vec::new();
    for server in servers.iter().cycle().take(6) {
        if let Ok(c) = connect(server, "outage").await {
            more.push(c);
        }
    }
    assert_eq!(
        open.len() + more.len(),
        5,
        "the org-wide limit holds with sessions admitted during the outage"
    );
}
