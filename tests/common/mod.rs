//! Test harness: runs the real `dynabase` binary on port 0 and talks to it
//! over real HTTP.
#![allow(dead_code)]

pub mod cluster;
pub mod pg;
pub mod stripe;
pub mod stripe_mock;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A running `dynabase serve`.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// `127.0.0.1:PORT` of the PostgreSQL proxy.
    pub proxy_addr: String,
    stdout: mpsc::Receiver<String>,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dynabase"))
}

pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// A command for the binary with a clean, test-local environment.
pub fn command(data_dir: &Path) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DYNABASE_CONFIG_DIR", config_dir())
        .env("DYNABASE__STORE__DATA_DIR", data_dir)
        .env("DYNABASE__HTTP__HOST", "127.0.0.1")
        .env("DYNABASE__PROXY__HOST", "127.0.0.1")
        .env("DYNABASE__PROXY__PORT", "0")
        .env("DYNABASE__SHUTDOWN__DEADLINE", "5s")
        .env("PORT", "0")
        .env("RUST_LOG", "warn");
    if std::env::var("DYNABASE_TEST_RELAY").as_deref() == Ok("event_loop") {
        // Sessions of organizations without a QPS limit are relayed by the
        // event loop, the rest by the async relay. This pass (scripts/test.sh)
        // lifts every tier's limit so the proxy suites run on the event loop;
        // a test's own tier settings still win.
        for tier in ["FREE", "STARTER", "PRO"] {
            cmd.env(format!("DYNABASE__TIERS__{tier}__QPS"), "unlimited");
        }
    }
    cmd
}

impl Server {
    /// Starts `dynabase serve` with the admin token set and waits until it
    /// prints where it listens.
    pub fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> Server {
        let mut cmd = command(data_dir);
        cmd.env("DYNABASE_ADMIN_TOKEN", ADMIN_TOKEN);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Self::spawn(cmd.arg("serve"))
    }

    pub fn spawn(cmd: &mut Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dynabase");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut base = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("dynabase: HTTP API listening on ") {
                        base = Some(rest.trim().to_owned());
                    }
                    if let Some(rest) =
                        line.strip_prefix("dynabase: PostgreSQL proxy listening on ")
                    {
                        let proxy_addr = rest
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        return Server {
                            child,
                            base: base.take().expect("HTTP address is printed first"),
                            proxy_addr,
                            stdout: rx,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("dynabase did not report its HTTP address within 30 s");
                }
            }
        }
    }

    /// Port of the PostgreSQL proxy.
    pub fn proxy_port(&self) -> u16 {
        self.proxy_addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("proxy port")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The Prometheus text from `GET /metrics`.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Waits up to 10 s for a stdout line starting with `prefix`; returns
    /// the rest of that line.
    pub fn wait_for_line(&self, prefix: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(line) = self
            .stdout
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Some(rest.to_owned());
            }
        }
        None
    }

    /// Hands over the process (to kill it without the harness's clean-up).
    pub fn into_child(mut self) -> Child {
        let placeholder = Command::new("true").spawn().expect("spawn true");
        std::mem::replace(&mut self.child, placeholder)
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit.
    pub fn terminate(mut self, limit: Duration) -> Option<ExitStatus> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            sent.map(|s| s.success()).unwrap_or(false),
            "kill -TERM failed"
        );
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    // reqwest is built without a default crypto provider (the binary picks
    // ring); fails harmlessly when one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// The URL of a service that `scripts/services.sh start` provides, from
/// `var` or `default`, if it answers a TCP connect. Under `CI=true` a missing
/// service fails the test; elsewhere the test is skipped with a message.
pub fn require_service(var: &str, default: &str) -> Option<String> {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let hostport = url
        .split("://")
        .nth(1)
        .unwrap_or(&url)
        .trim_end_matches('/')
        .to_owned();
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
        .unwrap_or(false);
    if reachable {
        return Some(url);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI requires {var} ({url}) to be reachable; run scripts/services.sh start");
    }
    eprintln!("SKIP: {var} ({url}) is not reachable; run scripts/services.sh start");
    None
}

/// GETs an admin path as JSON.
pub async fn admin_get(server: &Server, path: &str) -> (u16, Value) {
    let r = client()
        .get(server.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Sends an admin request with a JSON body.
pub async fn admin_send(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let r = client()
        .request(method, server.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}
