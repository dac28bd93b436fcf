//! Calibration end to end: the real binary reads Railway's figures from a
//! local HTTP server on port 0 that answers Railway's documented GraphQL
//! shapes (`tests/fixtures/railway/`), on both stores; errors, the manual
//! path, the alert and the per-org comparison.

mod common;

use std::{
    collections::VecDeque,
    path::Path,
    sync::{Arc, Mutex},
};

use common::{admin_get, admin_send, Server};
use dynabase::adapters::store::{EmbeddedStore, MongoStore};
use dynabase_actors::{
    domain::records::{Period, UsageRecord},
    OrgId, Organization, Store, Tier, Upstream,
};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Requests seen: the Authorization header and the body.
type Seen = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// Answers each POST with the next programmed (status, body); records the
/// requests' Authorization header and body.
struct RailwayStandIn {
    url: String,
    answers: Arc<Mutex<VecDeque<(u16, String)>>>,
    seen: Seen,
}

impl RailwayStandIn {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/graphql/v2", listener.local_addr().expect("addr"));
        let answers: Arc<Mutex<VecDeque<(u16, String)>>> = Arc::default();
        let seen: Seen = Arc::default();
        let (a, s) = (answers.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (a, s) = (a.clone(), s.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
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
                        if buf.len() < head_end + 4 + length {
                            continue;
                        }
                        let auth = text[..head_end]
                            .lines()
                            .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                            .map(|l| l[14..].trim().to_owned());
                        let body = text[head_end + 4..].to_owned();
                        // Only the test's period is answered from the queue;
                        // the scheduled calibration of another month is not.
                        let ours = body.contains(PERIOD_START);
                        s.lock().unwrap().push((auth, body));
                        let (status, body) = if ours {
                            a.lock().unwrap().pop_front()
                        } else {
                            None
                        }
                        .unwrap_or((503, "{}".to_owned()));
                        let head = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(head.as_bytes()).await;
                        let _ = stream.write_all(body.as_bytes()).await;
                        return;
                    }
                });
            }
        });
        Self { url, answers, seen }
    }

    fn answer(&self, status: u16, body: &str) {
        self.answers
            .lock()
            .unwrap()
            .push_back((status, body.to_owned()));
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/railway/{name}")),
    )
    .expect("fixture")
}

const PERIOD: &str = "2026-10";
const PERIOD_START: &str = "2026-10-01T00:00:00Z";

/// The worked example's orgs and their estimated usage, written to the
/// store before the server starts (or beside it, on MongoDB).
async fn seed(store: &dyn Store) {
    let period = Period::parse(PERIOD).unwrap();
    for (id, tier, hours, service) in [
        ("acme", Tier::Starter, "900", Some("svc-acme")),
        ("globex", Tier::Pro, "600", Some("svc-globex")),
        ("initech", Tier::Free, "0.5", None),
    ] {
        let mut org = Organization {
            id: OrgId::parse(id).unwrap(),
            name: id.into(),
            tier,
            upstream: Upstream::parse("127.0.0.1:5432").unwrap(),
            stripe_customer_id: None,
            stripe_subscription_id: None,
            pending_tier_change: None,
            created_at: period.start(),
            updated_at: period.start(),
            lifecycle: Default::default(),
            compute: Default::default(),
        };
        org.lifecycle.railway_service_id = service.map(str::to_owned);
        store.create_org(&org).await.expect("org");
        store
            .record_usage(&UsageRecord {
                key: format!("cal:{id}"),
                org: org.id.clone(),
                database: "app".into(),
                period: period.clone(),
                window_start: period.start(),
                query_cycles: 1,
                duration_us: 1,
                vcpu_hours: hours.parse().unwrap(),
                gb_hours: Decimal::ZERO,
            })
            .await
            .expect("usage");
    }
}

fn dec(v: &Value) -> Decimal {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
}

async fn calibrate(server: &Server, body: Value) -> Value {
    let (status, record) =
        admin_send(server, reqwest::Method::POST, "/admin/calibrations", body).await;
    assert_eq!(status, 201, "{record}");
    record
}

async fn scenario(server: &Server, railway: &RailwayStandIn) {
    // From Railway's API: the worked example.
    railway.answer(200, &fixture("metrics.json"));
    let r = calibrate(server, json!({ "period": PERIOD })).await;
    assert_eq!(r["source"], "railway_api");
    assert_eq!(dec(&r["railway_bill"]), "48.60".parse::<Decimal>().unwrap());
    assert_eq!(
        dec(&r["actual_rate"]),
        "0.032389".parse::<Decimal>().unwrap()
    );
    assert_eq!(dec(&r["variance"]), "0.142307".parse::<Decimal>().unwrap());
    assert_eq!(r["alert"], false, "14% is within 20%");
    assert_eq!(
        r["by_org"][0]["org"], "globex",
        "the furthest off first: {r}"
    );
    // Memory per org from Railway's per-service GB (one hourly sample of 200 GB).
    assert_eq!(
        dec(&r["by_org"][0]["measured_gb_hours"]),
        "200".parse::<Decimal>().unwrap(),
        "{r}"
    );
    let (auth, body) = railway
        .seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(_, b)| b.contains(PERIOD_START))
        .cloned()
        .unwrap();
    assert_eq!(auth.as_deref(), Some("Bearer railway-test-token"));
    assert!(
        body.contains("metrics(") && body.contains("proj-cal"),
        "{body}"
    );

    // Stored, and listed.
    let (status, stored) = admin_get(server, &format!("/admin/calibrations/{PERIOD}")).await;
    assert_eq!(status, 200);
    assert_eq!(stored["variance"], r["variance"]);

    // Every failure is a clear note and an alert, never a zero bill.
    for (status, body, expected) in [
        (401, "{}".to_owned(), "refused the token"),
        (429, "{}".to_owned(), "rate limiting"),
        (502, "{}".to_owned(), "HTTP 502"),
        (200, fixture("errors.json"), "Not Authorized"),
        (
            200,
            "{\"data\": {\"metrics\": [".to_owned(),
            "could not be read",
        ),
    ] {
        railway.answer(status, &body);
        let r = calibrate(server, json!({ "period": PERIOD })).await;
        assert_eq!(r["alert"], true, "{r}");
        assert_eq!(r["railway_bill"], Value::Null, "{r}");
        assert!(
            r["note"].as_str().is_some_and(|n| n.contains(expected)),
            "{expected}: {r}"
        );
    }

    // The manual path: an operator's bill, above the threshold.
    let r = calibrate(server, json!({ "period": PERIOD, "bill_usd": "60.00" })).await;
    assert_eq!(r["source"], "manual");
    assert_eq!(dec(&r["variance"]), "0.305269".parse::<Decimal>().unwrap());
    assert_eq!(r["alert"], true);
    assert!(r["suggestion"]
        .as_str()
        .is_some_and(|s| s.contains("1.439405")));
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("dynabase_calibration_alert 1"),
        "the alert gauge"
    );

    // Bad input: 422, nothing stored.
    let (status, body) = admin_send(
        server,
        reqwest::Method::POST,
        "/admin/calibrations",
        json!({ "period": "2026-13", "bill_usd": 60 }),
    )
    .await;
    assert_eq!(status, 422, "{body}");

    // The margin report at the calibrated rate.
    let (status, margin) =
        admin_get(server, &format!("/admin/reports/margin?period={PERIOD}")).await;
    assert_eq!(status, 200, "{margin}");
    assert_eq!(margin["rate_source"], "calibrated");
    let starter = margin["tiers"]
        .as_array()
        .and_then(|t| t.iter().find(|x| x["tier"] == "starter"))
        .cloned()
        .unwrap_or(Value::Null);
    // Revenue: $10 base; cost: 900 h × 0.039987 = $35.99 → negative.
    assert_eq!(dec(&starter["revenue"]), Decimal::from(10), "{margin}");
    assert_eq!(
        dec(&starter["cost"]),
        "35.99".parse::<Decimal>().unwrap(),
        "{margin}"
    );
    assert!(margin["negative_margin_orgs"]
        .as_array()
        .is_some_and(|o| o.iter().any(|x| x["org"] == "acme")));
}

fn env(railway: &RailwayStandIn) -> Vec<(&'static str, String)> {
    vec![
        ("RAILWAY_API_TOKEN", "railway-test-token".to_owned()),
        ("DYNABASE__RAILWAY__PROJECT_ID", "proj-cal".to_owned()),
        ("DYNABASE__RAILWAY__API_URL", railway.url.clone()),
        ("DYNABASE__CALIBRATION__INTERVAL", "1h".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibration_from_railways_api_on_the_embedded_store() {
    let railway = RailwayStandIn::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = EmbeddedStore::open(dir.path()).expect("store");
        seed(&store).await;
    }
    let env = env(&railway);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(dir.path(), &pairs);
    scenario(&server, &railway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibration_from_railways_api_on_mongodb() {
    let Some(url) =
        common::require_service("DYNABASE_TEST_MONGODB_URL", "mongodb://127.0.0.1:27017")
    else {
        return;
    };
    let railway = RailwayStandIn::start().await;
    let db = common::pg::unique("calibration");
    let store = MongoStore::connect(&url, &db).await.expect("mongo");
    seed(&store).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut env = env(&railway);
    env.push(("MONGODB_URL", url));
    env.push(("DYNABASE__STORE__MONGODB_DATABASE", db));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(dir.path(), &pairs);
    scenario(&server, &railway).await;
    drop(server);
    store.database().drop().await.expect("drop");
}
