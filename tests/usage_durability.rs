//! Usage survives what production throws at it, measured against what the
//! clients saw: SIGTERM during load (exact after restart), kill -9 (at most
//! one flush interval missing, nothing counted twice), and the MongoDB-wire
//! server stopped and restarted during load (exact).

mod common;
mod usage_common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::Server;
use futures_util::future::join_all;
use rust_decimal::Decimal;
use usage_common::{
    admin_usage, connect, create_org, free_port, measured, pg, run_until, unique, wait_for_cycles,
    Seen, FLUSH,
};

const SLEEP_20MS: &str = "SELECT pg_sleep(0.02)";

/// Starts `sessions` looping clients of `org`; returns the stop flag, what
/// they saw, and their tasks.
async fn load(
    server: &Server,
    org: &str,
    sessions: usize,
) -> (
    Arc<AtomicBool>,
    Arc<Mutex<Seen>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let clients = join_all((0..sessions).map(|_| connect(server, org, "postgres"))).await;
    let tasks = clients
        .into_iter()
        .map(|c| tokio::spawn(run_until(c, SLEEP_20MS, stop.clone(), seen.clone())))
        .collect();
    (stop, seen, tasks)
}

async fn finish(stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
}

fn embedded(dir: &Path, flush: &str) -> Server {
    Server::start(dir, &[("DYNABASE__USAGE__FLUSH_INTERVAL", flush)])
}

/// Each test runs servers under load and judges what a kill or an outage
/// cost within one flush interval: run them one at a time so they do not
/// starve each other's timers of CPU.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A long flush interval: what is written, the shutdown flush writes.
    let server = embedded(dir.path(), "30s");
    create_org(&server, "term", "pro", &pg).await;
    let (stop, seen, tasks) = load(&server, "term", 3).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let waiter = std::thread::spawn(move || server.terminate(Duration::from_secs(15)));
    // Sessions keep working while the proxy drains; then they close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    finish(&stop, tasks).await;
    let status = waiter.join().unwrap().expect("exited");
    assert!(status.success(), "{status:?}");
    let completed = {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.errors, 0);
        seen.completed.len() as u64
    };
    assert!(completed > 30, "load ran: {completed}");

    let server = embedded(dir.path(), FLUSH);
    let report = admin_usage(&server, "term").await;
    let (cycles, seconds, _) = measured(&report);
    eprintln!("SIGTERM: recorded {cycles} of {completed} completed, {seconds} s");
    assert_eq!(cycles, completed, "exact after SIGTERM: {report}");
    assert!(seconds >= Decimal::from(completed) * Decimal::new(2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_at_most_one_flush_interval() {
    let _serial = SERIAL.lock().await;
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let flush = Duration::from_millis(500);
    let mut server = embedded(dir.path(), "500ms");
    create_org(&server, "nine", "pro", &pg).await;
    let (stop, seen, tasks) = load(&server, "nine", 3).await;
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    server.child.kill().expect("SIGKILL");
    let killed = Instant::now();
    let _ = server.child.wait();
    finish(&stop, tasks).await;
    let (completed, recent) = {
        let seen = seen.lock().unwrap();
        // A write cut at a flush lands a few milliseconds later.
        let slack = flush + Duration::from_millis(150);
        let recent = seen
            .completed
            .iter()
            .filter(|t| killed.saturating_duration_since(**t) < slack)
            .count() as u64;
        (seen.completed.len() as u64, recent)
    };

    let server = embedded(dir.path(), FLUSH);
    let (cycles, _, _) = measured(&admin_usage(&server, "nine").await);
    eprintln!(
        "kill -9: recorded {cycles} of {completed} completed; {recent} in the last flush interval"
    );
    // Nothing twice: at most the cycles in flight (one per session) that the
    // proxy saw answered but the client did not.
    assert!(cycles <= completed + 3, "recorded {cycles} of {completed}");
    assert!(
        cycles + recent >= completed,
        "recorded {cycles} of {completed}; {recent} completed in the last flush interval"
    );
}

/// A FerretDB of this test's own, which it may stop and start.
struct Ferret {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Ferret {
    fn binary() -> Option<PathBuf> {
        let bin = std::env::var_os("DYNABASE_TEST_FERRETDB_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(".services/bin/ferretdb")
            });
        if bin.is_file() {
            return Some(bin);
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "CI requires FerretDB at {} (scripts/services.sh builds it)",
                bin.display()
            );
        }
        eprintln!("SKIP: no FerretDB binary at {}", bin.display());
        None
    }

    fn start(bin: PathBuf) -> Ferret {
        let mut f = Ferret {
            bin,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        f.up();
        f
    }

    fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let (data, state) = (self.dir.path().join("data"), self.dir.path().join("state"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let child = Command::new(&self.bin)
            .arg(format!("--listen-addr=127.0.0.1:{}", self.port))
            .arg("--handler=sqlite")
            .arg(format!("--sqlite-url=file:{}/", data.display()))
            .arg(format!("--state-dir={}", state.display()))
            .args(["--debug-addr=-", "--telemetry=disable", "--log-level=ERROR"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ferretdb");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "ferretdb did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Ferret {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_outage_during_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let Some(pg) = pg() else { return };
    let Some(bin) = Ferret::binary() else { return };
    let mut ferret = Ferret::start(bin);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("DYNABASE__USAGE__FLUSH_INTERVAL", FLUSH),
            ("MONGODB_URL", &ferret.url()),
            ("DYNABASE__STORE__MONGODB_DATABASE", &unique("outage")),
        ],
    );
    create_org(&server, "outage", "pro", &pg).await;
    let (stop, seen, tasks) = load(&server, "outage", 2).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    ferret.down();
    // Usage keeps flowing while the store is away: flushes fail and the
    // records wait, under their keys.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    ferret.up();
    tokio::time::sleep(Duration::from_millis(700)).await;
    finish(&stop, tasks).await;
    let completed = {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.errors, 0);
        seen.completed.len() as u64
    };
    let report = wait_for_cycles(&server, "outage", completed, Duration::from_secs(40)).await;
    let (cycles, seconds, _) = measured(&report);
    eprintln!("MongoDB outage: recorded {cycles} of {completed} completed, {seconds} s");
    assert_eq!(cycles, completed, "exact after the outage: {report}");
    assert!(seconds >= Decimal::from(completed) * Decimal::new(2, 2));
    // And it stays exact: nothing is written twice later.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(measured(&admin_usage(&server, "outage").await).0, completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_the_store_is_down_keeps_usage_on_disk_until_written() {
    let _serial = SERIAL.lock().await;
    let Some(pg) = pg() else { return };
    let Some(bin) = Ferret::binary() else { return };
    let mut ferret = Ferret::start(bin);
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DYNABASE__USAGE__FLUSH_INTERVAL", FLUSH.to_owned()),
        ("MONGODB_URL", ferret.url()),
        ("DYNABASE__STORE__MONGODB_DATABASE", unique("spill")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(dir.path(), &env);
    create_org(&server, "spill", "pro", &pg).await;
    let (stop, seen, tasks) = load(&server, "spill", 2).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    ferret.down();
    tokio::time::sleep(Duration::from_millis(600)).await;
    finish(&stop, tasks).await;
    let completed = seen.lock().unwrap().completed.len() as u64;
    let status = server.terminate(Duration::from_secs(30)).expect("exited");
    assert!(status.success(), "{status:?}");
    let spill_file = dir.path().join("usage-unwritten.jsonl");
    assert!(spill_file.is_file(), "unwritten usage kept on disk");

    ferret.up();
    let server = Server::start(dir.path(), &env);
    let report = wait_for_cycles(&server, "spill", completed, Duration::from_secs(30)).await;
    let (cycles, _, _) = measured(&report);
    eprintln!("SIGTERM with the store down: recorded {cycles} of {completed} after restart");
    assert_eq!(cycles, completed, "exact once the store is back: {report}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while spill_file.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!spill_file.exists(), "removed once written");
}
