//! Wake overhead of scale-to-zero (`load-tests/wake_bench.sh`): on one
//! freshly initdb'd cluster, alternating in the same run,
//!
//! - **pg alone**: `pg_ctl -m fast stop`, then from `pg_ctl -W start` to the
//!   first accepted connection, probed every millisecond (a StartupMessage;
//!   "starting up" 57P03 answers do not count);
//! - **through the proxy**: the org suspended by `POST
//!   /admin/orgs/{id}/suspend`, then from the client's connect
//!   (tokio-postgres: TCP connect, StartupMessage) to its first `SELECT 1`
//!   result.
//!
//! Overhead is the difference of the two medians. Also prints how many of
//! the suspended cluster's processes run (must be 0).
//!
//! Usage: `wake_bench <rounds>` with `DYNABASE_BIN` (the `dynabase`
//! binary), `PG_BIN` (default /usr/lib/postgresql/15/bin). As root, pg_ctl
//! and initdb run as the `postgres` OS user.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const ADMIN: &str = "wake-bench-admin";

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(rounds));
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Cluster {
    root: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    fn create() -> Cluster {
        let pg_bin =
            std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
        let root = std::env::temp_dir().join(format!("wake-bench-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("root");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let root_user = sh(Command::new("id").arg("-u")).trim() == "0";
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        for tool in ["pg_ctl", "initdb"] {
            let runner = if root_user {
                "runuser -u postgres -- "
            } else {
                ""
            };
            let path = bin.join(tool);
            std::fs::write(
                &path,
                format!("#!/bin/sh\ncd /\nexec {runner}{pg_bin}/{tool} \"$@\"\n"),
            )
            .expect("wrapper");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let data = root.join("data");
        std::fs::create_dir_all(&data).expect("data");
        if root_user {
            sh(Command::new("chown").arg("postgres:postgres").arg(&data));
        }
        sh(Command::new(bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ]));
        let port = free_port();
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("conf");
        text.push_str(&format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nshared_buffers = 16MB\n",
            data.display()
        ));
        std::fs::write(&conf, text).expect("conf");
        let c = Cluster {
            root,
            data,
            bin,
            port,
        };
        c.pg_ctl(&["-w", "start"]);
        c
    }

    fn pg_ctl(&self, args: &[&str]) {
        sh(Command::new(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("bench.log"))
            .args(args));
    }

    /// Processes whose command line names this data directory.
    fn processes(&self) -> usize {
        let needle = self.data.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .filter(|e| {
                        std::fs::read(e.path().join("cmdline"))
                            .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                            .unwrap_or(false)
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// True once the server answers a StartupMessage with anything but 57P03.
async fn accepts(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for part in ["user", "postgres", "database", "postgres", ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    if s.write_all(&packet).await.is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    if s.read_exact(&mut head).await.is_err() {
        return false;
    }
    if head[0] != b'E' {
        return true;
    }
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]).max(4) as usize - 4;
    let mut rest = vec![0u8; len.min(4096)];
    let _ = s.read_exact(&mut rest).await;
    !rest.split(|&b| b == 0).any(|f| f == b"C57P03")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(rounds: usize) {
    let cluster = Cluster::create();
    let data_dir = tempfile_dir();
    let bin = std::env::var("DYNABASE_BIN").expect("DYNABASE_BIN");
    let mut child = Command::new(&bin)
        .arg("serve")
        .env("DYNABASE_ADMIN_TOKEN", ADMIN)
        .env("DYNABASE__STORE__DATA_DIR", &data_dir)
        .env("DYNABASE__HTTP__HOST", "127.0.0.1")
        .env("DYNABASE__PROXY__HOST", "127.0.0.1")
        .env("DYNABASE__PROXY__PORT", "0")
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn dynabase");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut http, mut proxy) = (String::new(), String::new());
    while proxy.is_empty() {
        let line = lines.next().expect("dynabase output").expect("line");
        if let Some(rest) = line.strip_prefix("dynabase: HTTP API listening on ") {
            http = rest.trim().to_owned();
        }
        if let Some(rest) = line.strip_prefix("dynabase: PostgreSQL proxy listening on ") {
            proxy = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let admin = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        client
            .request(method, format!("{http}{path}"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    let r = admin(
        reqwest::Method::POST,
        "/admin/orgs",
        serde_json::json!({"id":"bench","name":"bench","tier":"starter","upstream":format!("127.0.0.1:{}", cluster.port)}),
    )
    .await
    .expect("create org");
    assert_eq!(r.status(), 201);
    let r = admin(
        reqwest::Method::PUT,
        "/admin/orgs/bench/compute",
        serde_json::json!({"driver":"local","data_dir":cluster.data,"port":cluster.port,"pg_bin":cluster.bin}),
    )
    .await
    .expect("set compute");
    assert_eq!(r.status(), 200);
    let (proxy_host, proxy_port) = proxy.rsplit_once(':').expect("proxy address");
    let conninfo = format!(
        "host={proxy_host} port={proxy_port} user=postgres.bench dbname=postgres sslmode=disable"
    );

    let mut alone = Vec::new();
    let mut through = Vec::new();
    let mut processes_while_suspended = 0;
    for _ in 0..rounds {
        // PostgreSQL alone.
        cluster.pg_ctl(&["-m", "fast", "-w", "stop"]);
        let t = Instant::now();
        cluster.pg_ctl(&["-W", "start"]);
        while !accepts(cluster.port).await {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        alone.push(t.elapsed().as_secs_f64() * 1000.0);

        // Through the proxy.
        let r = admin(
            reqwest::Method::POST,
            "/admin/orgs/bench/suspend",
            serde_json::json!({}),
        )
        .await
        .expect("suspend");
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        processes_while_suspended = processes_while_suspended.max(cluster.processes());
        let t = Instant::now();
        let (pg, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .expect("connect through the proxy");
        let task = tokio::spawn(conn);
        pg.simple_query("SELECT 1").await.expect("SELECT 1");
        through.push(t.elapsed().as_secs_f64() * 1000.0);
        drop(pg);
        let _ = task.await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data_dir);
    alone.sort_by(f64::total_cmp);
    through.sort_by(f64::total_cmp);
    println!("| measure ({rounds} rounds, same cluster, alternating) | p50 ms | p90 ms | max ms |");
    println!("|---|---|---|---|");
    for (name, v) in [
        (
            "`pg_ctl -W start` → first accepted connection (probed every 1 ms)",
            &alone,
        ),
        (
            "through the proxy: connect → first `SELECT 1` result, suspended org",
            &through,
        ),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            percentile(v, 0.5),
            percentile(v, 0.9),
            v[v.len() - 1]
        );
    }
    println!();
    println!(
        "Wake overhead at p50: {:.1} ms. Processes of the suspended cluster: {processes_while_suspended}.",
        percentile(&through, 0.5) - percentile(&alone, 0.5)
    );
}

fn tempfile_dir() -> PathBuf {
    let p =
        Path::new(&std::env::temp_dir()).join(format!("wake-bench-store-{}", std::process::id()));
    std::fs::create_dir_all(&p).expect("store dir");
    p
}
