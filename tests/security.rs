//! Secrets never reach logs or clients: the binary runs at debug level with
//! every secret set to a recognisable value, is driven through the paths
//! that log errors (bad admin token, a badly signed webhook, Stripe and
//! Railway unreachable), and nothing it printed or answered contains one.

mod common;

use std::{
    io::Read,
    time::{Duration, Instant},
};

use common::{client, command, stripe::sign, ADMIN_TOKEN};
use dynabase_actors::{domain::records::Period, UnixMillis};
use serde_json::json;

const SECRETS: [(&str, &str); 4] = [
    ("STRIPE_API_KEY", "sk_test_SECRETstripeKEY4711"),
    ("STRIPE_WEBHOOK_SECRET", "whsec_SECRETwebhook4712"),
    ("DYNABASE_NOTIFICATION_SECRET", "SECRETnotify4713"),
    ("RAILWAY_API_TOKEN", "SECRETrailway4714"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_clients() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("server.log");
    let out = std::fs::File::create(&log).expect("log file");
    let mut cmd = command(dir.path());
    cmd.env("DYNABASE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "debug")
        // Stripe and Railway at a closed port: their errors get logged.
        .env("DYNABASE__STRIPE__API_BASE", "http://127.0.0.1:9")
        .env(
            "DYNABASE__RAILWAY__API_URL",
            "http://127.0.0.1:9/graphql/v2",
        )
        .env("DYNABASE__RAILWAY__PROJECT_ID", "proj-security")
        .env("DYNABASE__LIFECYCLE__ALLOW_CLOCK_OVERRIDE", "true")
        .env("DYNABASE__BILLING__SETTLE_DELAY", "1s")
        .stdout(out.try_clone().expect("clone"))
        .stderr(out);
    for (k, v) in SECRETS {
        cmd.env(k, v);
    }
    let mut child = cmd.arg("serve").spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let base = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.starts_with("dynabase: HTTP API listening on "))
        {
            break line["dynabase: HTTP API listening on ".len()..]
                .trim()
                .to_owned();
        }
        assert!(Instant::now() < deadline, "no address: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut answers = String::new();
    let c = client();
    // A wrong admin token, and the right one.
    for token in ["wrong-token", ADMIN_TOKEN] {
        let r = c
            .get(format!("{base}/admin/orgs"))
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        answers.push_str(&r.text().await.unwrap_or_default());
    }
    // A webhook signed with another secret.
    let payload = common::stripe::invoice_event("paid", "evt_sec_1", 1, "cus_sec");
    let r = c
        .post(format!("{base}/webhooks/stripe"))
        .header(
            "Stripe-Signature",
            sign(&payload, "whsec_other", common::stripe::now_secs()),
        )
        .body(payload)
        .send()
        .await
        .expect("webhook");
    answers.push_str(&r.text().await.unwrap_or_default());
    // An org with an overage, billed against the unreachable Stripe; a
    // calibration against the unreachable Railway.
    let org = json!({"id": "sec-a", "name": "a", "tier": "starter", "upstream": "127.0.0.1:5432",
        "stripe_customer_id": "cus_sec"});
    let period = Period::containing(UnixMillis::now());
    let billed_at = period.end().0 + 2_000;
    for (method, path, body) in [
        ("POST", "/admin/orgs".to_owned(), org),
        (
            "POST",
            "/admin/orgs/sec-a/usage/adjustments".to_owned(),
            json!({"vcpu_hours": "40", "reason": "security test"}),
        ),
        (
            "POST",
            format!("/admin/billing/run?period={period}&now={billed_at}"),
            json!({}),
        ),
        (
            "POST",
            "/admin/calibrations".to_owned(),
            json!({"period": "2020-01"}),
        ),
        ("GET", "/admin/orgs/sec-a/billing".to_owned(), json!({})),
    ] {
        let req = if method == "GET" {
            c.get(format!("{base}{path}"))
        } else {
            c.post(format!("{base}{path}")).json(&body)
        };
        let r = req.bearer_auth(ADMIN_TOKEN).send().await.expect("request");
        answers.push_str(&r.text().await.unwrap_or_default());
    }
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    answers.push_str(&metrics.text().await.unwrap_or_default());
    let _ = child.kill();
    let _ = child.wait();
    let mut logged = String::new();
    std::fs::File::open(&log)
        .expect("log")
        .read_to_string(&mut logged)
        .expect("read log");
    assert!(
        logged.contains("billing") || logged.contains("Stripe"),
        "the error paths ran: {logged}"
    );
    assert!(
        answers.contains("\"retrying\":1"),
        "Stripe was called and failed: {answers}"
    );
    for (name, secret) in SECRETS {
        assert!(!logged.contains(secret), "{name} appears in the logs");
        assert!(!answers.contains(secret), "{name} appears in an answer");
    }
    assert!(
        !logged.contains(ADMIN_TOKEN),
        "the admin token appears in the logs"
    );
}
