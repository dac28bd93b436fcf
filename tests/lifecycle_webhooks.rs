//! Stripe webhooks driving the tier lifecycle, against the real binary
//! (embedded store): signature checks, redelivery, ordering, scheduled
//! downgrades with the scheduler's clock passed in, payment failures,
//! restarts, and the admin routes that show it all.

mod common;

use std::time::Duration;

use common::{
    admin_get, admin_send,
    stripe::{
        create_org, deliver, invoice_event, now_secs, post, sign, subscription_event, tick,
        wait_for_event, wait_for_org, Sub, PRO_PRICE, SECRET, STARTER_PRICE,
    },
    Server,
};
use reqwest::Method;
use serde_json::{json, Value};

const UPSTREAM: &str = "127.0.0.1:5432";
const DAY_MS: i64 = 24 * 3600 * 1000;

fn start(dir: &std::path::Path) -> Server {
    Server::start(dir, &common::stripe::env())
}

fn upgrade_to_pro(event_id: &str, created: i64, customer: &str, org: Option<&str>) -> String {
    subscription_event(&Sub {
        event_id,
        kind: "updated",
        created,
        subscription: "sub_1QsT9k8xK2mLq4ZrTq2YwVhN",
        customer,
        price: PRO_PRICE,
        lookup_key: Some("dynabase_pro_monthly"),
        status: "active",
        org,
    })
}

fn move_to_starter(event_id: &str, created: i64, customer: &str) -> String {
    subscription_event(&Sub {
        event_id,
        kind: "updated",
        created,
        subscription: "sub_1QsT9k8xK2mLq4ZrTq2YwVhN",
        customer,
        price: STARTER_PRICE,
        lookup_key: None,
        status: "active",
        org: None,
    })
}

async fn history(server: &Server, org: &str) -> Vec<Value> {
    let (status, h) = admin_get(server, &format!("/admin/orgs/{org}/tier-history")).await;
    assert_eq!(status, 200);
    h.as_array().cloned().unwrap_or_default()
}

async fn notification_kinds(server: &Server, org: &str) -> Vec<String> {
    let (status, n) = admin_get(server, &format!("/admin/orgs/{org}/notifications")).await;
    assert_eq!(status, 200);
    n.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["kind"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn unsigned_forged_and_stale_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    create_org(&server, "acme", "free", UPSTREAM, None).await;
    let payload = upgrade_to_pro(
        "evt_1QsSig8xK2mLq4ZrAaAaAaAa",
        now_secs(),
        "cus_Tq3xK9wLmN2pQr",
        Some("acme"),
    );
    let now = now_secs();

    let missing = post(&server, &payload, None).await;
    assert_eq!(missing.status(), 400);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_signature");

    let forged = post(
        &server,
        &payload,
        Some(&sign(&payload, "whsec_not_ours", now)),
    )
    .await;
    assert_eq!(forged.status(), 400);
    let stale = post(&server, &payload, Some(&sign(&payload, SECRET, now - 301))).await;
    assert_eq!(stale.status(), 400);
    let body: Value = stale.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_signature");
    let tampered = payload.replace("\"active\"", "\"trialing\"");
    let resigned_elsewhere = post(&server, &tampered, Some(&sign(&payload, SECRET, now))).await;
    assert_eq!(resigned_elsewhere.status(), 400);
    let garbage = post(&server, &payload, Some("t=now,v1=zz")).await;
    assert_eq!(garbage.status(), 400);

    // None of them was recorded or applied.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = admin_get(&server, "/admin/stripe/events/evt_1QsSig8xK2mLq4ZrAaAaAaAa").await;
    assert_eq!(status, 404);
    let (_, org) = admin_get(&server, "/admin/orgs/acme").await;
    assert_eq!(org["tier"], "free");
    assert!(history(&server, "acme").await.is_empty());

    // The same payload, properly signed, is applied at once (an upgrade).
    let answer = deliver(&server, &payload).await;
    assert_eq!(answer["duplicate"], false);
    let org = wait_for_org(&server, "acme", |o| o["tier"] == "pro").await;
    // The subscription's metadata linked the customer.
    assert_eq!(org["stripe_customer_id"], "cus_Tq3xK9wLmN2pQr");
    assert_eq!(
        org["stripe_subscription_id"],
        "sub_1QsT9k8xK2mLq4ZrTq2YwVhN"
    );
    assert_eq!(org["pending_tier_change"], Value::Null);
}

#[tokio::test]
async fn the_same_event_delivered_five_times_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    create_org(&server, "five", "free", UPSTREAM, Some("cus_Five")).await;
    let payload = upgrade_to_pro("evt_1QsFive8xK2mLq4ZrBbBbBbB", now_secs(), "cus_Five", None);

    let mut duplicates = Vec::new();
    for _ in 0..5 {
        // Stripe signs each delivery anew.
        duplicates.push(deliver(&server, &payload).await["duplicate"].clone());
    }
    assert_eq!(
        duplicates,
        [
            json!(false),
            json!(true),
            json!(true),
            json!(true),
            json!(true)
        ]
    );
    wait_for_org(&server, "five", |o| o["tier"] == "pro").await;
    let event = wait_for_event(&server, "evt_1QsFive8xK2mLq4ZrBbBbBbB").await;
    assert_eq!(event["status"], "done", "{event}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let h = history(&server, "five").await;
    assert_eq!(h.len(), 1, "one audit entry: {h:?}");
    assert_eq!(
        (h[0]["from"].as_str(), h[0]["to"].as_str()),
        (Some("free"), Some("pro"))
    );
    assert_eq!(h[0]["source"], "stripe:evt_1QsFive8xK2mLq4ZrBbBbBbB");
    assert_eq!(notification_kinds(&server, "five").await, ["tier_changed"]);
}

#[tokio::test]
async fn an_older_update_after_a_newer_one_is_recorded_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    create_org(&server, "order", "starter", UPSTREAM, Some("cus_Order")).await;
    let t = now_secs();
    let newer = upgrade_to_pro("evt_1QsNewer8xK2mLq4ZrCcCcCc", t, "cus_Order", None);
    let older = move_to_starter("evt_1QsOlder8xK2mLq4ZrDdDdDd", t - 60, "cus_Order");

    deliver(&server, &newer).await;
    wait_for_event(&server, "evt_1QsNewer8xK2mLq4ZrCcCcCc").await;
    deliver(&server, &older).await;
    let ignored = wait_for_event(&server, "evt_1QsOlder8xK2mLq4ZrDdDdDd").await;
    assert_eq!(ignored["status"], "ignored", "{ignored}");
    assert!(
        ignored["note"]
            .as_str()
            .unwrap()
            .contains("older than evt_1QsNewer8xK2mLq4ZrCcCcCc"),
        "{ignored}"
    );
    let (_, org) = admin_get(&server, "/admin/orgs/order").await;
    assert_eq!(org["tier"], "pro");
    assert_eq!(
        org["pending_tier_change"],
        Value::Null,
        "the older downgrade was not scheduled"
    );
    assert_eq!(history(&server, "order").await.len(), 1);
}

#[tokio::test]
async fn a_downgrade_is_scheduled_shown_applied_at_its_time_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    create_org(&server, "down", "pro", UPSTREAM, Some("cus_Down")).await;
    let before_ms = now_secs() * 1000;
    deliver(
        &server,
        &move_to_starter("evt_1QsDown8xK2mLq4ZrEeEeEeE", now_secs(), "cus_Down"),
    )
    .await;

    let org = wait_for_org(&server, "down", |o| !o["pending_tier_change"].is_null()).await;
    assert_eq!(
        org["tier"], "pro",
        "the current tier stays during the grace period"
    );
    let pending = &org["pending_tier_change"];
    assert_eq!(pending["to"], "starter");
    let effective = pending["effective_at"].as_i64().unwrap();
    let grace = effective - before_ms;
    assert!(
        (7 * DAY_MS - 5_000..=7 * DAY_MS + 5_000).contains(&grace),
        "grace {grace} ms"
    );
    assert_eq!(
        notification_kinds(&server, "down").await,
        ["downgrade_scheduled"]
    );

    // Just before its time nothing happens.
    let report = tick(&server, effective - 1).await;
    assert_eq!(report["applied"], json!([]));
    assert_eq!(
        admin_get(&server, "/admin/orgs/down").await.1["tier"],
        "pro"
    );

    // The schedule is in the store: it survives a restart.
    drop(server);
    let server = start(dir.path());
    let (_, org) = admin_get(&server, "/admin/orgs/down").await;
    assert_eq!(org["pending_tier_change"]["effective_at"], effective);

    let report = tick(&server, effective).await;
    assert_eq!(
        report["applied"],
        json!([{"org": "down", "from": "pro", "to": "starter"}])
    );
    let (_, org) = admin_get(&server, "/admin/orgs/down").await;
    assert_eq!(
        (org["tier"].as_str(), &org["pending_tier_change"]),
        (Some("starter"), &Value::Null)
    );
    let h = history(&server, "down").await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["source"], "lifecycle");
    assert_eq!(h[0]["at"], effective);
    assert_eq!(
        notification_kinds(&server, "down").await,
        ["downgrade_scheduled", "tier_changed"]
    );
    // A second tick (another replica, or the next one) changes nothing.
    assert_eq!(tick(&server, effective + 1).await["applied"], json!([]));
}

#[tokio::test]
async fn an_upgrade_during_a_pending_downgrade_cancels_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    create_org(&server, "flip", "pro", UPSTREAM, Some("cus_Flip")).await;
    let t = now_secs();
    deliver(
        &server,
        &move_to_starter("evt_1QsFlipA8xK2mLq4ZrFfFfFf", t, "cus_Flip"),
    )
    .await;
    let org = wait_for_org(&server, "flip", |o| !o["pending_tier_change"].is_null()).await;
    let effective = org["pending_tier_change"]["effective_at"].as_i64().unwrap();

    let enterprise = subscription_event(&Sub {
        event_id: "evt_1QsFlipB8xK2mLq4ZrGgGgGg",
        kind: "updated",
        created: t + 1,
        subscription: "sub_1QsT9k8xK2mLq4ZrTq2YwVhN",
        customer: "cus_Flip",
        price: "price_1QsEnt8xK2mLq4ZrEntAnnl",
        lookup_key: Some(common::stripe::ENTERPRISE_LOOKUP_KEY),
        status: "active",
        org: None,
    });
    deliver(&server, &enterprise).await;
    let org = wait_for_org(&server, "flip", |o| o["tier"] == "enterprise").await;
    assert_eq!(org["pending_tier_change"], Value::Null);
    // At the old date nothing happens any more.
    assert_eq!(tick(&server, effective + 1).await["applied"], json!([]));
    assert_eq!(
        admin_get(&server, "/admin/orgs/flip").await.1["tier"],
        "enterprise"
    );
}

#[tokio::test]
async fn a_failed_payment_moves_to_free_after_the_grace_unless_paid() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    create_org(&server, "late", "pro", UPSTREAM, Some("cus_Late")).await;
    let t = now_secs();
    deliver(
        &server,
        &invoice_event(
            "payment_failed",
            "evt_1QsFail1xK2mLq4ZrHhHhHh",
            t,
            "cus_Late",
        ),
    )
    .await;
    let org = wait_for_org(&server, "late", |o| {
        !o["lifecycle"]["past_due_since"].is_null()
    })
    .await;
    let since = org["lifecycle"]["past_due_since"].as_i64().unwrap();
    assert_eq!(org["tier"], "pro");
    assert_eq!(
        notification_kinds(&server, "late").await,
        ["payment_failed"]
    );

    // Paid within the grace: nothing happens at its end.
    deliver(
        &server,
        &invoice_event("paid", "evt_1QsPaid1xK2mLq4ZrJjJjJj", t + 5, "cus_Late"),
    )
    .await;
    wait_for_org(&server, "late", |o| {
        o["lifecycle"]["past_due_since"].is_null()
    })
    .await;
    assert_eq!(
        tick(&server, since + 7 * DAY_MS + 1).await["applied"],
        json!([])
    );

    // Failed again and not paid: FREE once the grace has passed.
    deliver(
        &server,
        &invoice_event(
            "payment_failed",
            "evt_1QsFail2xK2mLq4ZrKkKkKk",
            t + 10,
            "cus_Late",
        ),
    )
    .await;
    let org = wait_for_org(&server, "late", |o| {
        !o["lifecycle"]["past_due_since"].is_null()
    })
    .await;
    let since = org["lifecycle"]["past_due_since"].as_i64().unwrap();
    assert_eq!(
        tick(&server, since + 7 * DAY_MS - 1).await["applied"],
        json!([])
    );
    let report = tick(&server, since + 7 * DAY_MS).await;
    assert_eq!(
        report["applied"],
        json!([{"org": "late", "from": "pro", "to": "free"}])
    );
    assert_eq!(
        notification_kinds(&server, "late").await,
        [
            "payment_failed",
            "payment_recovered",
            "payment_failed",
            "tier_changed"
        ]
    );
}

#[tokio::test]
async fn a_finalized_invoice_lists_its_items_and_changes_no_tier() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    create_org(&server, "final", "pro", UPSTREAM, Some("cus_Final")).await;
    deliver(
        &server,
        &invoice_event(
            "finalized",
            "evt_1QsFinl8xK2mLq4ZrMmMmMm",
            now_secs(),
            "cus_Final",
        ),
    )
    .await;
    let event = wait_for_event(&server, "evt_1QsFinl8xK2mLq4ZrMmMmMm").await;
    assert_eq!(event["status"], "done", "{event}");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("in_1QsT9l8xK2mLq4ZrC0rPq8Uw")
            && note.contains("ii_1QsT8z8xK2mLq4ZrOvEr2609"),
        "{event}"
    );
    let (_, org) = admin_get(&server, "/admin/orgs/final").await;
    assert_eq!(org["tier"], "pro");
    assert!(org["lifecycle"]["past_due_since"].is_null(), "{org}");
    assert!(history(&server, "final").await.is_empty());
}

#[tokio::test]
async fn unknown_event_types_and_unknown_customers_are_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut product = common::stripe::fixture("product.created");
    product["created"] = now_secs().into();
    let answer = deliver(&server, &product.to_string()).await;
    assert_eq!(answer["id"], "evt_1QsPrd8xK2mLq4Zr1aBc2DeF");
    let event = wait_for_event(&server, "evt_1QsPrd8xK2mLq4Zr1aBc2DeF").await;
    assert_eq!(event["status"], "ignored");
    assert!(
        event["note"].as_str().unwrap().contains("product.created"),
        "{event}"
    );

    let stranger = upgrade_to_pro(
        "evt_1QsStrg8xK2mLq4ZrLlLlLl",
        now_secs(),
        "cus_Nobody",
        None,
    );
    deliver(&server, &stranger).await;
    let event = wait_for_event(&server, "evt_1QsStrg8xK2mLq4ZrLlLlLl").await;
    assert_eq!(event["status"], "ignored");
    assert!(
        event["note"].as_str().unwrap().contains("cus_Nobody"),
        "{event}"
    );
}

#[tokio::test]
async fn operators_change_tiers_by_hand_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    create_org(&server, "ops", "free", UPSTREAM, None).await;

    let (status, body) = admin_send(
        &server,
        Method::PUT,
        "/admin/orgs/ops/tier",
        json!({"tier": "pro"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "reason");
    let (status, _) = admin_send(
        &server,
        Method::PUT,
        "/admin/orgs/ops/tier",
        json!({"tier": "gold", "reason": "x"}),
    )
    .await;
    assert_eq!(status, 422);
    let (status, _) = admin_send(
        &server,
        Method::PUT,
        "/admin/orgs/nobody/tier",
        json!({"tier": "pro", "reason": "x"}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = admin_get(&server, "/admin/orgs/nobody/tier-history").await;
    assert_eq!(status, 404);

    let (status, org) = admin_send(
        &server,
        Method::PUT,
        "/admin/orgs/ops/tier",
        json!({"tier": "pro", "reason": "annual contract signed"}),
    )
    .await;
    assert_eq!(status, 200, "{org}");
    assert_eq!(org["tier"], "pro");
    // A manual downgrade is immediate (the operator decides).
    let (_, org) = admin_send(
        &server,
        Method::PUT,
        "/admin/orgs/ops/tier",
        json!({"tier": "starter", "reason": "contract ended"}),
    )
    .await;
    assert_eq!(
        (org["tier"].as_str(), &org["pending_tier_change"]),
        (Some("starter"), &Value::Null)
    );
    let h = history(&server, "ops").await;
    let steps: Vec<(&str, &str, &str, &str)> = h
        .iter()
        .map(|c| {
            (
                c["from"].as_str().unwrap(),
                c["to"].as_str().unwrap(),
                c["source"].as_str().unwrap(),
                c["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("free", "pro", "admin", "annual contract signed"),
            ("pro", "starter", "admin", "contract ended")
        ]
    );
    assert_eq!(
        notification_kinds(&server, "ops").await,
        ["tier_changed", "tier_changed"]
    );

    // A tier set with PATCH goes the same way: audited and notified.
    let (status, org) = admin_send(
        &server,
        Method::PATCH,
        "/admin/orgs/ops",
        json!({"tier": "pro", "name": "Ops Inc"}),
    )
    .await;
    assert_eq!(status, 200, "{org}");
    assert_eq!(
        (org["tier"].as_str(), org["name"].as_str()),
        (Some("pro"), Some("Ops Inc"))
    );
    let h = history(&server, "ops").await;
    let last = h.last().expect("an audit entry");
    assert_eq!(
        (&last["from"], &last["to"], &last["source"], &last["reason"]),
        (
            &json!("starter"),
            &json!("pro"),
            &json!("admin"),
            &json!("changed by admin")
        )
    );
    assert_eq!(
        notification_kinds(&server, "ops").await,
        ["tier_changed", "tier_changed", "tier_changed"]
    );

    // Without the override, the scheduler's clock cannot be moved forward.
    drop(server);
    let plain = Server::start(dir.path(), &[]);
    let (status, body) = admin_send(
        &plain,
        Method::POST,
        "/admin/lifecycle/tick",
        json!({"now": now_secs() * 1000 + DAY_MS}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    // And Stripe webhooks are off without a signing secret.
    let r = post(&plain, "{}", Some("t=1,v1=00")).await;
    assert_eq!(r.status(), 503);
}

/// A receiver of outbound notifications on a free port: answers 500 to the
/// first request and 200 afterwards; returns what it received.
async fn flaky_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/dynabase", listener.local_addr().unwrap());
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let n = tcp.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break (head.to_owned(), body.to_owned());
                    }
                }
            };
            let signature = head
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("dynabase-signature"))
                        .map(|(_, v)| v.trim().to_owned())
                })
                .unwrap_or_default();
            let first = {
                let mut log = log.lock().unwrap();
                log.push((signature, body));
                log.len() == 1
            };
            let status = if first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = tcp
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    (url, received)
}

#[tokio::test]
async fn notifications_reach_the_org_webhook_signed_and_retried() {
    const NOTIFY_SECRET: &str = "notify-secret-for-tests";
    let dir = tempfile::tempdir().unwrap();
    let mut env = common::stripe::env();
    env.extend([
        ("DYNABASE_NOTIFICATION_SECRET", NOTIFY_SECRET),
        ("DYNABASE__NOTIFICATIONS__RETRY_BASE", "100ms"),
    ]);
    let server = Server::start(dir.path(), &env);
    create_org(&server, "hooked", "free", UPSTREAM, None).await;
    let (url, received) = flaky_receiver().await;
    let (status, org) = admin_send(
        &server,
        Method::PUT,
        "/admin/orgs/hooked/notification-url",
        json!({ "url": url }),
    )
    .await;
    assert_eq!(status, 200, "{org}");
    assert_eq!(org["lifecycle"]["notification_url"], url.as_str());
    let (status, _) = admin_send(
        &server,
        Method::PUT,
        "/admin/orgs/hooked/notification-url",
        json!({"url": "ftp://x"}),
    )
    .await;
    assert_eq!(status, 422);

    let (status, _) = admin_send(
        &server,
        Method::PUT,
        "/admin/orgs/hooked/tier",
        json!({"tier": "pro", "reason": "trial converted"}),
    )
    .await;
    assert_eq!(status, 200);

    // Refused once (500), then delivered on a later tick.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "not redelivered: {:?}",
            received.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let received = received.lock().unwrap().clone();
    assert_eq!(
        received.len(),
        2,
        "delivered once more after the failure, then no more"
    );
    let (first, second) = (&received[0], &received[1]);
    assert_eq!(first.1, second.1, "the same notification, same id");
    let body: Value = serde_json::from_str(&second.1).unwrap();
    assert_eq!(body["type"], "tier_changed");
    assert_eq!(body["org"], "hooked");
    assert_eq!(body["tier"], "pro");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("trial converted"),
        "{body}"
    );
    // Our signature: Stripe's scheme with our secret.
    for (signature, payload) in &received {
        let t: i64 = signature
            .strip_prefix("t=")
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("signature header {signature:?}"));
        assert_eq!(signature, &sign(payload, NOTIFY_SECRET, t));
    }
    let (_, notes) = admin_get(&server, "/admin/orgs/hooked/notifications").await;
    assert_eq!(notes.as_array().map(Vec::len), Some(1));
    assert_eq!(notes[0]["key"], body["id"]);
}

#[tokio::test]
async fn usage_warnings_reach_the_org_webhook_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = common::stripe::env();
    env.push(("DYNABASE__NOTIFICATIONS__RETRY_BASE", "100ms"));
    let server = Server::start(dir.path(), &env);
    create_org(&server, "warned", "free", UPSTREAM, None).await;
    let (url, received) = flaky_receiver().await;
    let (status, _) = admin_send(
        &server,
        Method::PUT,
        "/admin/orgs/warned/notification-url",
        json!({ "url": url }),
    )
    .await;
    assert_eq!(status, 200);

    // FREE includes 5 vCPU-hours: a 5-hour debit crosses 80% and 100%.
    let (status, body) = admin_send(
        &server,
        Method::POST,
        "/admin/orgs/warned/usage/adjustments",
        json!({"vcpu_hours": "5", "reason": "test debit"}),
    )
    .await;
    assert!((200..300).contains(&status), "{status}: {body}");

    // Two warnings; the receiver refuses the first request once.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let distinct = || {
        let mut ids: Vec<String> = received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, b)| serde_json::from_str::<Value>(b).ok())
            .filter(|b| b["type"] == "usage_warning")
            .filter_map(|b| b["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    while distinct().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "warnings not delivered: {:?}",
            received.lock().unwrap()
        );
        tick(&server, now_secs() * 1000).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids = distinct();
    assert!(ids.iter().any(|id| id.ends_with(":80")), "{ids:?}");
    assert!(ids.iter().any(|id| id.ends_with(":100")), "{ids:?}");
}
