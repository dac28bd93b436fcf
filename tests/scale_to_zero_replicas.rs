//! Scale-to-zero across replicas: two gateways on one MongoDB-wire store and
//! one Redis, a tenant cluster this test creates (initdb), and replica A
//! killed with SIGKILL half-way through a wake or a suspend. Replica B takes
//! the step over once A's lease has ended, and the record never says
//! `active` while the cluster is stopped.
//!
//! The window is made deterministic with the `command` driver: its wake and
//! suspend scripts wait while a `hold` file exists, so A is killed while
//! its step is provably in progress (state written, script running).

mod common;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{
    admin_get, admin_send,
    cluster::Cluster,
    pg::{self, conninfo, eventually, try_connect, unique_org},
    Server,
};
use reqwest::Method;
use serde_json::{json, Value};

/// Each test starts two servers and a cluster: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `scale_to_zero.step_lease` of both replicas: how long B waits before it
/// presumes A dead.
const LEASE: &str = "2s";

struct Services {
    mongo: String,
    redis: String,
}

fn services() -> Option<Services> {
    Some(Services {
        mongo: common::require_service("DYNABASE_TEST_MONGODB_URL", "mongodb://127.0.0.1:27017")?,
        redis: common::require_service("DYNABASE_TEST_REDIS_URL", "redis://127.0.0.1:6379")?,
    })
}

/// Replicas `r0` (A) and `r1` (B) on one store database and one Redis
/// prefix. The background tick is slowed down so that B's connection, not
/// its tick, takes the step over (the tick path is the same claim).
struct Pair {
    a: Server,
    b: Server,
    database: String,
    _dirs: Vec<tempfile::TempDir>,
}

fn pair(s: &Services) -> Pair {
    let database = pg::unique("s2z_replicas");
    let prefix = pg::unique("s2zr");
    let mut dirs = Vec::new();
    let mut servers = Vec::new();
    for replica in ["r0", "r1"] {
        let dir = tempfile::tempdir().expect("temp dir");
        servers.push(Server::start(
            dir.path(),
            &[
                ("MONGODB_URL", s.mongo.as_str()),
                ("DYNABASE__STORE__MONGODB_DATABASE", database.as_str()),
                ("REDIS_URL", s.redis.as_str()),
                ("DYNABASE__REDIS__KEY_PREFIX", prefix.as_str()),
                ("DYNABASE__REPLICA__ID", replica),
                ("DYNABASE__SCALE_TO_ZERO__STEP_LEASE", LEASE),
                ("DYNABASE__SCALE_TO_ZERO__WAKE_DEADLINE", LEASE),
                ("DYNABASE__SCALE_TO_ZERO__TICK_INTERVAL", "1h"),
                ("DYNABASE__LIFECYCLE__ALLOW_CLOCK_OVERRIDE", "true"),
                ("RUST_LOG", "warn,dynabase_actors::scale_to_zero=info"),
            ],
        ));
        dirs.push(dir);
    }
    let b = servers.pop().expect("two servers");
    let a = servers.pop().expect("two servers");
    Pair {
        a,
        b,
        database,
        _dirs: dirs,
    }
}

/// Scripts that run pg_ctl on `cluster`, pausing while `hold` exists, and
/// append the replica that runs them (`DYNABASE__REPLICA__ID`, inherited
/// from the gateway) to `wakes` / `suspends`.
struct Steps {
    dir: tempfile::TempDir,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn hold(&self) {
        std::fs::write(self.path("hold"), "").expect("create hold file");
    }

    fn release(&self) {
        std::fs::remove_file(self.path("hold")).expect("remove hold file");
    }

    /// Replicas that ran the step, in order.
    fn ran(&self, step: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(step))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn spec(&self, cluster: &Cluster) -> Value {
        let pg_ctl = cluster.bin.join("pg_ctl");
        let pg_ctl = pg_ctl.display();
        let data = cluster.data_dir.display();
        let hold = self.path("hold");
        let hold = hold.display();
        let wait = format!("while [ -e {hold} ]; do sleep 0.05; done");
        json!({
            "driver": "command",
            "wake": format!(
                "echo \"$DYNABASE__REPLICA__ID\" >> {}; {wait}; \
                 {pg_ctl} -D {data} status >/dev/null || {pg_ctl} -D {data} -l {data}/test.log -w start",
                self.path("wakes").display()
            ),
            "suspend": format!(
                "echo \"$DYNABASE__REPLICA__ID\" >> {}; {wait}; \
                 if {pg_ctl} -D {data} status >/dev/null; then {pg_ctl} -D {data} -m fast -w stop; fi",
                self.path("suspends").display()
            ),
            "status": format!("{pg_ctl} -D {data} status"),
            "timeout_ms": 60_000,
        })
    }

    /// Processes whose command line names this test's hold file: the
    /// step scripts still running.
    fn scripts_running(&self) -> usize {
        let needle = self.path("hold").display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains(&needle))
            .count()
    }
}

async fn compute(server: &Server, org: &str) -> Value {
    let (status, body) = admin_get(server, &format!("/admin/orgs/{org}/compute")).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn create(server: &Server, cluster: &Cluster, spec: Value) -> String {
    let org = unique_org("s2zr");
    pg::create_org(server, &org, "free", &cluster.upstream()).await;
    let (status, body) = admin_send(
        server,
        Method::PUT,
        &format!("/admin/orgs/{org}/compute"),
        spec,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    org
}

async fn suspend(server: &Server, org: &str) -> (u16, Value) {
    admin_send(
        server,
        Method::POST,
        &format!("/admin/orgs/{org}/suspend"),
        json!({}),
    )
    .await
}

fn info(server: &Server, org: &str) -> String {
    conninfo(server, &format!("postgres.{org}"), "postgres", None)
}

/// Waits until `server` reports `org` in `phase`.
async fn wait_for_phase(server: &Server, org: &str, phase: &str) -> Value {
    eventually(
        Duration::from_secs(15),
        &format!("{org} to be {phase}"),
        || async {
            let c = compute(server, org).await;
            (c["state"] == phase).then_some(c)
        },
    )
    .await
}

/// SIGKILL, as a crashed or evicted replica gets.
fn kill(server: Server) {
    let mut child = server.into_child();
    child.kill().expect("kill -9 replica A");
    child.wait().expect("reap replica A");
}

/// Connects through `server` as a client with a retry loop would: a 57P03
/// ("starting up", "could not be started") is retried, anything else
/// fails. Meanwhile checks, every few milliseconds, that whenever the
/// record says `active` the cluster runs (the state is read first: once
/// `active` is written the cluster is up, and nothing stops it here).
async fn connect_and_watch(server: &Server, org: &str, cluster: &Cluster) -> (pg::Session, usize) {
    let conninfo = info(server, org);
    let client = async {
        let mut refusals = 0;
        let started = Instant::now();
        loop {
            match try_connect(&conninfo).await {
                Ok(session) => return (session, refusals),
                Err(e) if pg::sqlstate(&e).as_deref() == Some("57P03") => {
                    refusals += 1;
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "still refused after 30 s: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("connection through replica B failed: {e:?}"),
            }
        }
    };
    let watch = async {
        loop {
            let state = compute(server, org).await;
            if state["state"] == "active" {
                assert!(
                    cluster.running(),
                    "the record says active while the cluster is stopped: {state}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        connected = client => connected,
        () = watch => unreachable!("the watch loops until the client is done"),
    }
}

async fn select_one(session: &pg::Session) {
    let row = session
        .client
        .query_one("SELECT 1::int4", &[])
        .await
        .expect("SELECT 1 on the woken database");
    assert_eq!(row.get::<_, i32>(0), 1);
}

/// Suspends the org through A, then has a client connect through A and
/// kills A while its wake script runs. Returns B, the org and the
/// `waking` record A left.
async fn kill_a_mid_wake(
    s: &Services,
    cluster: &Cluster,
    steps: &Steps,
) -> (Server, String, Value) {
    let Pair { a, b, .. } = pair(s);
    let org = create(&a, cluster, steps.spec(cluster)).await;
    let (status, body) = suspend(&a, &org).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "suspended", "{body}");
    assert!(!cluster.running(), "suspended: the cluster is stopped");

    // A client connects through A; A claims the wake, writes `waking` and
    // runs the wake script, which waits on the hold file.
    steps.hold();
    let through_a = tokio::spawn({
        let conninfo = info(&a, &org);
        async move { try_connect(&conninfo).await.map(drop) }
    });
    let waking = wait_for_phase(&b, &org, "waking").await;
    eventually(Duration::from_secs(10), "A to run the wake", || async {
        (steps.ran("wakes") == ["r0"]).then_some(())
    })
    .await;

    kill(a);
    // The wake script died with its replica (parent-death signal): nothing
    // of A's wake can start the cluster later.
    eventually(Duration::from_secs(5), "A's wake script to die", || async {
        (steps.scripts_running() == 0).then_some(())
    })
    .await;
    steps.release();
    assert!(!cluster.running(), "A never got to start the cluster");
    let after = compute(&b, &org).await;
    assert_eq!(after["state"], "waking", "{after}");
    assert_eq!(after["since"], waking["since"], "nobody touched it yet");
    assert!(
        through_a.await.expect("client task").is_err(),
        "A's client lost its connection with A"
    );
    (b, org, waking)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_wake_is_taken_over_by_another_after_its_lease() {
    let _serial = SERIAL.lock().await;
    let Some(s) = services() else { return };
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let steps = Steps::new();
    let (b, org, _) = kill_a_mid_wake(&s, &cluster, &steps).await;

    // B: the record says `waking`, held by a replica that no longer
    // renews anything. Once the lease has passed B takes the wake over.
    let (session, refusals) = connect_and_watch(&b, &org, &cluster).await;
    select_one(&session).await;
    eprintln!("served through B after {refusals} 57P03 refusal(s)");
    assert_eq!(steps.ran("wakes"), ["r0", "r1"], "B ran the wake once");
    let state = compute(&b, &org).await;
    assert_eq!(state["state"], "active", "{state}");
    assert_eq!(state["cold_starts"], 1, "{state}");
    assert_eq!(state["last_error"], Value::Null, "{state}");
    assert!(cluster.running());
    drop(session);
    let again = try_connect(&info(&b, &org))
        .await
        .expect("a second session");
    select_one(&again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_suspend_is_finished_by_another_and_woken() {
    let _serial = SERIAL.lock().await;
    let Some(s) = services() else { return };
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let Pair { a, b, .. } = pair(&s);
    let steps = Steps::new();
    let org = create(&a, &cluster, steps.spec(&cluster)).await;
    assert_eq!(compute(&b, &org).await["state"], "active");

    // A's operator suspend: `suspending` written, the script waits on the
    // hold file before it stops the cluster.
    steps.hold();
    let through_a = tokio::spawn({
        let url = a.url(&format!("/admin/orgs/{org}/suspend"));
        async move {
            common::client()
                .post(url)
                .bearer_auth(common::ADMIN_TOKEN)
                .json(&json!({}))
                .send()
                .await
                .map(drop)
        }
    });
    wait_for_phase(&b, &org, "suspending").await;
    eventually(Duration::from_secs(10), "A to run the suspend", || async {
        (steps.ran("suspends") == ["r0"]).then_some(())
    })
    .await;

    kill(a);
    eventually(
        Duration::from_secs(5),
        "A's suspend script to die",
        || async { (steps.scripts_running() == 0).then_some(()) },
    )
    .await;
    steps.release();
    assert!(
        through_a.await.expect("request task").is_err(),
        "A's operator request lost its connection"
    );
    // A's stop died with A: it cannot land after B has woken the cluster.
    assert!(cluster.running(), "A's stop never ran");
    assert_eq!(compute(&b, &org).await["state"], "suspending");

    // B: a connection finds a `suspending` record past its lease, finishes
    // the suspend under a claim of its own, then wakes the database.
    let (session, refusals) = connect_and_watch(&b, &org, &cluster).await;
    select_one(&session).await;
    eprintln!("served through B after {refusals} 57P03 refusal(s)");
    assert_eq!(
        steps.ran("suspends"),
        ["r0", "r1"],
        "B finished the suspend"
    );
    assert_eq!(steps.ran("wakes"), ["r1"], "then B woke it");
    let state = compute(&b, &org).await;
    assert_eq!(state["state"], "active", "{state}");
    assert_eq!(state["cold_starts"], 1, "{state}");
    assert!(cluster.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_died_holding_a_claim_before_writing_the_state_is_taken_over() {
    let _serial = SERIAL.lock().await;
    let Some(s) = services() else { return };
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let pair = pair(&s);
    let org = create(&pair.a, &cluster, cluster.local_spec()).await;
    let (status, body) = suspend(&pair.a, &org).await;
    assert_eq!(status, 200, "{body}");
    let since = body["since"].as_i64().expect("since");
    drop(pair.a);

    // A replica won the wake's claim and died before writing `waking`: the
    // record still says `suspended`, the claim (a unique key, never
    // replaced) says somebody has the step for one more lease.
    let lease_ms = 2_000;
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        + lease_ms;
    store_claim(
        &s.mongo,
        &pair.database,
        &format!("wake:{org}:{since}:suspended"),
        until,
    )
    .await;

    let (session, _) = connect_and_watch(&pair.b, &org, &cluster).await;
    select_one(&session).await;
    let state = compute(&pair.b, &org).await;
    assert_eq!(state["state"], "active", "{state}");
    assert_eq!(state["cold_starts"], 1, "{state}");
    assert!(cluster.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_left_by_a_killed_replica_with_no_client_is_undone_by_the_tick() {
    let _serial = SERIAL.lock().await;
    let Some(s) = services() else { return };
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let steps = Steps::new();
    let (b, org, waking) = kill_a_mid_wake(&s, &cluster, &steps).await;
    let since = waking["since"].as_i64().expect("since");

    // Nobody connects. Within the lease the tick leaves the record alone;
    // past it, B's tick undoes the wake (the cluster might have been
    // started) under the claim a connection would take it over with.
    let report = tick(&b, since + 500).await;
    assert_eq!(report["suspended"], json!([]), "{report}");
    assert_eq!(compute(&b, &org).await["state"], "waking");
    // A's client still holds an org-wide connection lease in Redis until
    // it expires (`lease_ttl`): until then the org counts as busy.
    eventually(
        Duration::from_secs(30),
        "B's tick to undo the wake",
        || async {
            let report = tick(&b, since + 2_500).await;
            assert_eq!(report["failed"], json!([]), "{report}");
            (report["suspended"] == json!([org])).then_some(())
        },
    )
    .await;
    let state = compute(&b, &org).await;
    assert_eq!(state["state"], "suspended", "{state}");
    assert_eq!(steps.ran("suspends"), ["r0", "r1"], "B ran the stop");
    assert!(!cluster.running());

    // The next client wakes it as usual.
    let (session, _) = connect_and_watch(&b, &org, &cluster).await;
    select_one(&session).await;
    assert_eq!(compute(&b, &org).await["state"], "active");
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

/// Inserts a claim document the way a replica's `Store::claim` does.
async fn store_claim(url: &str, database: &str, name: &str, until: i64) {
    let client = mongodb::Client::with_uri_str(url)
        .await
        .expect("MongoDB client");
    client
        .database(database)
        .collection::<mongodb::bson::Document>("claims")
        .insert_one(mongodb::bson::doc! { "_id": name, "until": until })
        .await
        .expect("insert claim");
}
