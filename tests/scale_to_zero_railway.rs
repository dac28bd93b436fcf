//! The `railway` compute driver end to end: the real binary talks to a local
//! HTTP server on port 0 that stands in for Railway's GraphQL API, answering
//! with the recorded shapes of `tests/fixtures/railway/compute/` and acting
//! on a tenant cluster this test creates (initdb): `deploymentStop` stops
//! it, `deploymentRestart` starts it (PostgreSQL still starting when the
//! stand-in first says SUCCESS, so the proxy's own readiness probe of the
//! upstream is what the client waits for). Then every failure Railway can
//! answer: each gives the client 57P03 and leaves the organization
//! suspended with the error recorded.

mod common;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use common::{
    admin_get, admin_send,
    cluster::Cluster,
    pg::{self, conninfo, try_connect, unique_org},
    Server,
};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const TOKEN: &str = "railway-test-token";
const SERVICE: &str = "svc-7d3e";
const ENVIRONMENT: &str = "env-41c2";
/// The id in `deployments_*.json`.
const DEPLOYMENT: &str = "5a1b7c9e-3f2d-4e8a-9b6c-1d2e3f4a5b6c";

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/railway/compute")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How the stand-in answers `deploymentRestart` and the status reads after
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    /// `deploymentRestart` answered with this HTTP status.
    Http(u16),
    /// `deploymentRestart` answered HTTP 200 with GraphQL `errors`.
    GraphQlErrors,
    /// `deploymentRestart` answered HTTP 200 with a body that is not JSON.
    Malformed,
    /// After the restart the deployment reads CRASHED.
    Crashes,
    /// After the restart the deployment reads DEPLOYING for ever.
    NeverReady,
}

#[derive(Default)]
struct Railway {
    /// `deploymentStop` was called and no restart since.
    stopped: bool,
    /// Status reads since the last `deploymentRestart`; `None`: none ran.
    polls_since_restart: Option<u32>,
    mode: Option<Mode>,
    /// (Authorization header, operation, variables) of every request.
    seen: Vec<(String, String, Value)>,
}

struct StandIn {
    url: String,
    state: Arc<Mutex<Railway>>,
}

impl StandIn {
    async fn start(cluster: Arc<Cluster>) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/graphql/v2", listener.local_addr().expect("addr"));
        let state: Arc<Mutex<Railway>> = Arc::default();
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone(), cluster.clone()));
            }
        });
        StandIn { url, state }
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    /// Operations seen so far, in order, and forgets them.
    fn take_seen(&self) -> Vec<(String, String, Value)> {
        std::mem::take(&mut self.state.lock().unwrap().seen)
    }
}

/// One request: reads it, answers it, closes.
async fn serve(mut stream: TcpStream, state: Arc<Mutex<Railway>>, cluster: Arc<Cluster>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head, body) = loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        let Some(head_end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length = text[..head_end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        if buf.len() >= head_end + 4 + length {
            break (text[..head_end].to_owned(), text[head_end + 4..].to_owned());
        }
    };
    let auth = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        .map(|l| l[14..].trim().to_owned())
        .unwrap_or_default();
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let query = request["query"].as_str().unwrap_or_default();
    let operation = [
        "deploymentStop",
        "deploymentRestart",
        "deployments",
        "metrics",
    ]
    .into_iter()
    .find(|op| query.contains(&format!("{op}(")))
    .unwrap_or("unknown")
    .to_owned();
    let (status, answer) = answer(&operation, &state, &cluster).await;
    state
        .lock()
        .unwrap()
        .seen
        .push((auth, operation, request["variables"].clone()));
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(answer.as_bytes()).await;
}

/// What Railway would answer, acting on the cluster.
async fn answer(operation: &str, state: &Mutex<Railway>, cluster: &Arc<Cluster>) -> (u16, String) {
    let mode = state.lock().unwrap().mode.unwrap_or(Mode::Normal);
    match operation {
        "deploymentStop" => {
            state.lock().unwrap().stopped = true;
            let cluster = cluster.clone();
            tokio::task::spawn_blocking(move || cluster.pg_ctl(&["-m", "fast", "-w", "stop"]))
                .await
                .expect("stop the cluster");
            (200, fixture("deployment_stop.json"))
        }
        "deploymentRestart" => match mode {
            Mode::Http(status) => (status, "{\"message\":\"unavailable\"}".to_owned()),
            Mode::GraphQlErrors => (200, fixture("errors.json")),
            Mode::Malformed => (200, "<html>Bad gateway".to_owned()),
            Mode::Normal | Mode::Crashes | Mode::NeverReady => {
                state.lock().unwrap().polls_since_restart = Some(0);
                (200, fixture("deployment_restart.json"))
            }
        },
        "deployments" => {
            let polls = {
                let mut s = state.lock().unwrap();
                if let Some(p) = s.polls_since_restart.as_mut() {
                    *p += 1;
                }
                (s.stopped, s.polls_since_restart)
            };
            match (polls, mode) {
                ((true, None), _) => (200, fixture("deployments_stopped.json")),
                ((true, Some(_)), Mode::Crashes) => (200, fixture("deployments_failed.json")),
                ((true, Some(_)), Mode::NeverReady) => (200, fixture("deployments_deploying.json")),
                // The first read after the restart: still deploying.
                ((true, Some(1)), _) => (200, fixture("deployments_deploying.json")),
                ((true, Some(_)), _) => {
                    // Started without waiting: Railway says SUCCESS while
                    // PostgreSQL may still answer 57P03.
                    let cluster = cluster.clone();
                    tokio::task::spawn_blocking(move || cluster.pg_ctl(&["-W", "start"]))
                        .await
                        .expect("start the cluster");
                    let mut s = state.lock().unwrap();
                    s.stopped = false;
                    s.polls_since_restart = None;
                    (200, fixture("deployments_success.json"))
                }
                ((false, _), _) => (200, fixture("deployments_success.json")),
            }
        }
        // The calibrator's metrics query (a token is configured): not ours.
        _ => (503, "{}".to_owned()),
    }
}

async fn compute(server: &Server, org: &str) -> Value {
    let (status, body) = admin_get(server, &format!("/admin/orgs/{org}/compute")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn info(server: &Server, org: &str) -> String {
    conninfo(server, &format!("postgres.{org}"), "postgres", None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_railway_driver_stops_and_restarts_the_deployment_and_maps_every_failure_to_57p03() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let cluster = Arc::new(cluster);
    let railway = StandIn::start(cluster.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(
        dir.path(),
        &[
            ("RAILWAY_API_TOKEN", TOKEN),
            ("DYNABASE__RAILWAY__PROJECT_ID", "proj-s2z"),
            ("DYNABASE__RAILWAY__API_URL", railway.url.as_str()),
            ("DYNABASE__RAILWAY__POLL_INTERVAL", "50ms"),
            ("DYNABASE__RAILWAY__WAKE_TIMEOUT", "1500ms"),
            ("DYNABASE__CALIBRATION__INTERVAL", "1h"),
            ("RUST_LOG", "warn,dynabase_actors::scale_to_zero=info"),
        ],
    );
    let org = unique_org("s2zrw");
    // The upstream is the service's host: here, the cluster.
    pg::create_org(&server, &org, "free", &cluster.upstream()).await;
    let spec = json!({"driver": "railway", "service_id": SERVICE, "environment_id": ENVIRONMENT});
    let (status, body) = admin_send(
        &server,
        Method::PUT,
        &format!("/admin/orgs/{org}/compute"),
        spec,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin_send(
        &server,
        Method::PUT,
        &format!("/admin/orgs/{org}/compute"),
        json!({"driver": "railway", "service_id": SERVICE}),
    )
    .await;
    assert_eq!(status, 400, "environment_id is required: {body}");
    railway.take_seen();

    // Suspend: the latest deployment is looked up and stopped.
    let (status, body) = admin_send(
        &server,
        Method::POST,
        &format!("/admin/orgs/{org}/suspend"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "suspended", "{body}");
    assert!(!cluster.running(), "deploymentStop stopped the database");
    let seen = railway.take_seen();
    let ours: Vec<_> = seen.iter().filter(|(_, op, _)| op != "metrics").collect();
    assert_eq!(ours.len(), 2, "{seen:?}");
    assert_eq!(ours[0].0, format!("Bearer {TOKEN}"));
    assert_eq!(ours[0].1, "deployments");
    assert_eq!(
        ours[0].2,
        json!({"input": {"serviceId": SERVICE, "environmentId": ENVIRONMENT}, "first": 1})
    );
    assert_eq!(ours[1].1, "deploymentStop");
    assert_eq!(ours[1].2, json!({ "id": DEPLOYMENT }));

    // A client connects: restart, DEPLOYING, SUCCESS, then the proxy waits
    // for the upstream itself and serves the session.
    let session = try_connect(&info(&server, &org))
        .await
        .expect("served after the Railway wake");
    let row = session
        .client
        .query_one("SELECT 1::int4", &[])
        .await
        .expect("SELECT 1");
    assert_eq!(row.get::<_, i32>(0), 1);
    drop(session);
    let state = compute(&server, &org).await;
    assert_eq!(state["state"], "active", "{state}");
    assert_eq!(state["cold_starts"], 1, "{state}");
    let ops: Vec<String> = railway
        .take_seen()
        .into_iter()
        .map(|(_, op, _)| op)
        .filter(|op| op != "metrics")
        .collect();
    assert_eq!(
        ops,
        [
            "deployments",
            "deploymentRestart",
            "deployments",
            "deployments"
        ],
        "look up, restart, DEPLOYING, SUCCESS"
    );

    // Every failure: 57P03 to the client, suspended, the cause recorded.
    let cases: [(Mode, &str); 7] = [
        (Mode::GraphQlErrors, "GraphQL errors: Not Authorized"),
        (Mode::Http(401), "refused the token (HTTP 401)"),
        (Mode::Http(429), "rate-limited"),
        (Mode::Http(503), "answered HTTP 503"),
        (Mode::Malformed, "not the expected shape"),
        (Mode::Crashes, "is CRASHED"),
        (Mode::NeverReady, "did not finish within 1500 ms"),
    ];
    let mut errors = HashMap::new();
    for (mode, expected) in cases {
        let (status, body) = admin_send(
            &server,
            Method::POST,
            &format!("/admin/orgs/{org}/suspend"),
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "{mode:?}: {body}");
        assert!(!cluster.running());
        railway.set_mode(mode);
        let e = pg::connect_error(&info(&server, &org)).await;
        assert_eq!(e.code().code(), "57P03", "{mode:?}: {e:?}");
        assert!(
            e.message().contains("could not be started"),
            "{mode:?}: {}",
            e.message()
        );
        let state = compute(&server, &org).await;
        assert_eq!(state["state"], "suspended", "{mode:?}: {state}");
        let error = state["last_error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(expected), "{mode:?}: {error}");
        assert!(!cluster.running(), "{mode:?}");
        errors.insert(format!("{mode:?}"), error);
        // Back to a healthy platform before the next suspend.
        railway.set_mode(Mode::Normal);
        let session = try_connect(&info(&server, &org))
            .await
            .unwrap_or_else(|e| panic!("after {mode:?}, the next connection retries: {e:?}"));
        drop(session);
        assert_eq!(compute(&server, &org).await["last_error"], Value::Null);
    }
    eprintln!("recorded errors: {errors:#?}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("dynabase_scale_wakes_total{driver=\"railway\",outcome=\"error\"} 7"),
        "{metrics}"
    );
}
