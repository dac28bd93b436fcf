//! Billing end to end: the real binary, the real stores, Stripe's own
//! stripe-mock behind a recording relay that also keeps what Stripe would
//! keep (`tests/common/stripe_mock.rs`). Usage is added as adjustments, so
//! every amount is exact and checked to the cent.

mod billing_common;
mod common;

use std::time::Duration;

use billing_common as b;
use common::{
    admin_get,
    stripe::{self as hooks, deliver, wait_for_event},
    stripe_mock::Fault,
    Server,
};
use serde_json::Value;

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The worked examples of docs/billing.md, per tier, billed once however
/// often the job runs, restarts included; an invoice event confirms them.
async fn overages_become_one_item_each(
    env: Vec<(String, String)>,
    relay: &common::stripe_mock::StripeRelay,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = b::start(dir.path(), &env);
    let (period, settled) = b::this_period();
    b::create_org(&server, "bill-starter", "starter", Some("cus_bill_starter")).await;
    b::create_org(&server, "bill-pro", "pro", Some("cus_bill_pro")).await;
    b::create_org(&server, "bill-free", "free", Some("cus_bill_free")).await;
    b::create_org(&server, "bill-nocus", "starter", None).await;
    b::create_org(&server, "bill-within", "pro", Some("cus_bill_within")).await;
    b::add_hours(&server, "bill-starter", "40.5").await;
    b::add_hours(&server, "bill-pro", "212.3456789").await;
    b::add_hours(&server, "bill-free", "7").await;
    b::add_hours(&server, "bill-nocus", "30").await;
    b::add_hours(&server, "bill-within", "150").await;
    // An adjustment: a credit lowers the total before rounding.
    b::add_hours(&server, "bill-nocus", "-2.5").await;

    // An open period is not billed.
    let (status, body) = b::run(&server, &period, common::stripe::now_secs() * 1000).await;
    assert_eq!(status, 409, "{body}");

    // The preview says what the run will do, and writes nothing.
    let (status, preview) =
        admin_get(&server, &format!("/admin/billing/preview?period={period}")).await;
    assert_eq!(status, 200, "{preview}");
    let line = |org: &str| {
        preview["charges"]
            .as_array()
            .and_then(|c| c.iter().find(|l| l["org"] == org))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(str_of(&line("bill-starter")["charge"]["amount"]), "2.33");
    assert_eq!(str_of(&line("bill-pro")["charge"]["amount"]), "1.48");
    assert_eq!(line("bill-free")["skip"], "no_overage_price");
    assert_eq!(line("bill-within")["skip"], "no_overage");
    assert_eq!(str_of(&line("bill-nocus")["charge"]["amount"]), "0.38");
    assert_eq!(line("bill-nocus")["skip"], "no_customer");
    assert_eq!(relay.items().len(), 0);

    let (status, report) = b::run(&server, &period, settled).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["created"], 2, "{report}");
    assert_eq!(str_of(&report["amount_pushed"]), "3.81");

    let items = relay.items();
    assert_eq!(items.len(), 2);
    let starter = items
        .iter()
        .find(|i| i.customer == "cus_bill_starter")
        .expect("starter item");
    assert_eq!(starter.json["amount"], 233);
    assert_eq!(starter.metadata("dynabase_org"), Some("bill-starter"));
    assert_eq!(starter.metadata("dynabase_period"), Some(period.as_str()));
    assert_eq!(starter.metadata("overage_vcpu_hours"), Some("15.5"));
    assert_eq!(starter.metadata("rate_per_vcpu_hour"), Some("0.15"));
    let create = relay
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.field("customer") == Some("cus_bill_starter"))
        .expect("create request");
    assert_eq!(create.field("currency"), Some("usd"));
    assert_eq!(
        create.idempotency_key.as_deref(),
        Some(format!("dynabase-overage-bill-starter:{period}").as_str())
    );
    assert!(create
        .field("description")
        .is_some_and(|d| d.contains("15.5 over at 0.15")));

    let starter_record = b::record(&server, "bill-starter", &period).await;
    assert_eq!(starter_record["state"], "pushed");
    assert_eq!(str_of(&starter_record["provider_item_id"]), starter.id());
    let free_record = b::record(&server, "bill-free", &period).await;
    assert_eq!(free_record["state"], "skipped");
    assert_eq!(free_record["skip"], "no_overage_price");

    // Run again, and again after a restart: nothing new reaches Stripe.
    let creates = relay.creates();
    let (_, again) = b::run(&server, &period, settled + 1_000).await;
    assert_eq!(again["created"], 0, "{again}");
    assert_eq!(again["recorded"], 0, "{again}");
    drop(server);
    let server = b::start(dir.path(), &env);
    let (_, after_restart) = b::run(&server, &period, settled + 2_000).await;
    assert_eq!(after_restart["created"], 0, "{after_restart}");
    assert_eq!(relay.creates(), creates);
    assert_eq!(relay.items().len(), 2);

    // The org without a customer gets linked: its record is charged then.
    let (status, _) = common::admin_send(
        &server,
        reqwest::Method::PATCH,
        "/admin/orgs/bill-nocus",
        serde_json::json!({ "stripe_customer_id": "cus_bill_nocus" }),
    )
    .await;
    assert_eq!(status, 200);
    let (_, linked) = b::run(&server, &period, settled + 3_000).await;
    assert_eq!(linked["created"], 1, "{linked}");
    assert_eq!(relay.items().len(), 3);

    // invoice.finalized carrying the item confirms the record.
    let mut event = hooks::fixture("invoice.finalized");
    event["id"] = format!("evt_fin_{}", starter.id()).into();
    event["created"] = hooks::now_secs().into();
    event["data"]["object"]["id"] = "in_bill_starter".into();
    event["data"]["object"]["customer"] = "cus_bill_starter".into();
    event["data"]["object"]["lines"]["data"][0]["parent"]["invoice_item_details"]["invoice_item"] =
        starter.id().into();
    deliver(&server, &event.to_string()).await;
    wait_for_event(&server, &format!("evt_fin_{}", starter.id())).await;
    let confirmed = b::record(&server, "bill-starter", &period).await;
    assert_eq!(confirmed["state"], "confirmed", "{confirmed}");
    assert_eq!(confirmed["provider_invoice_id"], "in_bill_starter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overages_become_one_invoice_item_each_on_the_embedded_store() {
    let Some(relay) = b::relay().await else {
        return;
    };
    overages_become_one_item_each(b::env(&relay), &relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overages_become_one_invoice_item_each_on_mongodb() {
    let Some(relay) = b::relay().await else {
        return;
    };
    let Some(mongo) =
        common::require_service("DYNABASE_TEST_MONGODB_URL", "mongodb://127.0.0.1:27017")
    else {
        return;
    };
    let mut env = b::env(&relay);
    env.push(("MONGODB_URL".into(), mongo));
    env.push((
        "DYNABASE__STORE__MONGODB_DATABASE".into(),
        common::pg::unique("billing"),
    ));
    overages_become_one_item_each(env, &relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_outages_are_retried_and_refusals_fail_with_a_notification() {
    let Some(relay) = b::relay().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = b::start(dir.path(), &b::env(&relay));
    let (period, settled) = b::this_period();
    b::create_org(&server, "flaky-a", "starter", Some("cus_flaky_a")).await;
    b::create_org(&server, "gone-b", "starter", Some("cus_gone_b")).await;
    b::add_hours(&server, "flaky-a", "35").await;
    b::add_hours(&server, "gone-b", "35").await;

    // Two 5xx and a 429 on creates, then one 400 (a deleted customer).
    relay.fail_next("POST", "/v1/invoiceitems", 1, Fault::status(500));
    relay.fail_next("POST", "/v1/invoiceitems", 1, Fault::status(503));
    let (_, first) = b::run(&server, &period, settled).await;
    assert_eq!(first["retrying"], 2, "{first}");
    for org in ["flaky-a", "gone-b"] {
        let r = b::record(&server, org, &period).await;
        assert_eq!(r["state"], "computed", "{r}");
        assert!(str_of(&r["last_error"]).contains("unavailable"), "{r}");
    }
    relay.fail_next("POST", "/v1/invoiceitems", 1, Fault::status(429));
    relay.fail_next(
        "POST",
        "/v1/invoiceitems",
        1,
        Fault::error(
            400,
            "invalid_request_error",
            "No such customer: 'cus_gone_b'",
        ),
    );
    // Retried after the backoff (1 s, then 2 s).
    let (_, second) = b::run(&server, &period, settled + 1_500).await;
    assert_eq!(second["retrying"], 1, "{second}");
    assert_eq!(second["failed"], 1, "{second}");
    let (_, third) = b::run(&server, &period, settled + 5_000).await;
    assert_eq!(third["created"], 1, "{third}");

    let a = b::record(&server, "flaky-a", &period).await;
    let g = b::record(&server, "gone-b", &period).await;
    let (pushed, refused) = if a["state"] == "pushed" {
        (a, g)
    } else {
        (g, a)
    };
    assert_eq!(pushed["state"], "pushed", "{pushed}");
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(str_of(&refused["last_error"]).contains("No such customer"));
    let org = str_of(&refused["org"]).to_owned();
    let (_, notes) = admin_get(&server, &format!("/admin/orgs/{org}/notifications")).await;
    assert!(
        notes
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x["kind"] == "billing_failed")),
        "{notes}"
    );
    assert_eq!(relay.items().len(), 1, "one item, whatever the retries");
    let metrics = server.metrics().await;
    assert!(metrics.contains("dynabase_billing_items_total{result=\"failed\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_between_stripe_and_the_store_creates_one_item() {
    let Some(relay) = b::relay().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let env = b::env(&relay);
    let server = b::start(dir.path(), &env);
    let (period, settled) = b::this_period();
    b::create_org(&server, "killed", "pro", Some("cus_killed")).await;
    b::add_hours(&server, "killed", "250").await;

    // Stripe creates the item; its answer never arrives: the gateway is
    // killed while it waits.
    relay.fail_next("POST", "/v1/invoiceitems", 1, Fault::ForwardThenStall);
    let run_url = server.url(&format!("/admin/billing/run?period={period}&now={settled}"));
    tokio::spawn(async move {
        let _ = common::client()
            .post(run_url)
            .bearer_auth(common::ADMIN_TOKEN)
            .send()
            .await;
    });
    common::pg::eventually(
        Duration::from_secs(10),
        "the create reaches Stripe",
        || async { (relay.items().len() == 1).then_some(()) },
    )
    .await;
    let mut child = server.into_child();
    child.kill().expect("kill -9");
    let _ = child.wait();

    let server = b::start(dir.path(), &env);
    let r = b::record(&server, "killed", &period).await;
    assert_eq!(r["state"], "computed", "the store never heard: {r}");
    // After the dead replica's lease: the look-up finds Stripe's item.
    let (_, report) = b::run(&server, &period, settled + 3_000).await;
    assert_eq!(report["found_existing"], 1, "{report}");
    assert_eq!(report["created"], 0, "{report}");
    assert_eq!(relay.creates(), 1);
    assert_eq!(relay.items().len(), 1);
    let r = b::record(&server, "killed", &period).await;
    assert_eq!(r["state"], "pushed");
    assert_eq!(str_of(&r["provider_item_id"]), relay.items()[0].id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_billing_at_once_create_one_item_per_org() {
    let Some(relay) = b::relay().await else {
        return;
    };
    let Some(mongo) =
        common::require_service("DYNABASE_TEST_MONGODB_URL", "mongodb://127.0.0.1:27017")
    else {
        return;
    };
    let mut env = b::env(&relay);
    env.push(("MONGODB_URL".into(), mongo));
    env.push((
        "DYNABASE__STORE__MONGODB_DATABASE".into(),
        common::pg::unique("billing2"),
    ));
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = b::start(dir_a.path(), &env);
    let bb: Server = b::start(dir_b.path(), &env);
    let (period, settled) = b::this_period();
    for i in 0..12 {
        let org = format!("twin-{i}");
        b::create_org(&a, &org, "starter", Some(&format!("cus_twin_{i}"))).await;
        b::add_hours(&a, &org, "30").await;
    }
    let (ra, rb) = tokio::join!(b::run(&a, &period, settled), b::run(&bb, &period, settled));
    assert_eq!((ra.0, rb.0), (200, 200), "{} {}", ra.1, rb.1);
    // Whatever one replica left to the other (a claimed record), a later
    // run finishes.
    let _ = b::run(&bb, &period, settled + 5_000).await;
    let items = relay.items();
    let keys: Vec<(Option<String>, &str)> = items
        .iter()
        .map(|i| (i.idempotency_key.clone(), i.id()))
        .collect();
    assert_eq!(items.len(), 12, "one item per org: {keys:?} {ra:?} {rb:?}");
    let mut orgs: Vec<&str> = items
        .iter()
        .filter_map(|i| i.metadata("dynabase_org"))
        .collect();
    orgs.sort();
    orgs.dedup();
    assert_eq!(orgs.len(), 12, "no org twice");
    let created = ra.1["created"].as_u64().unwrap_or(0) + rb.1["created"].as_u64().unwrap_or(0);
    assert!(created <= 12, "{ra:?} {rb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_billing_records_everything_and_sends_nothing_until_switched_live() {
    let Some(relay) = b::relay().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = b::start(dir.path(), &b::env(&relay));
    let (period, settled) = b::this_period();
    b::create_org(&server, "shadow-a", "starter", Some("cus_shadow_a")).await;
    b::add_hours(&server, "shadow-a", "40.5").await;

    let (status, body) = common::admin_send(
        &server,
        reqwest::Method::PUT,
        "/admin/modes",
        serde_json::json!({ "billing": "shadow" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, preview) = admin_get(&server, &format!("/admin/billing/preview?period={period}")).await;
    assert_eq!(preview["mode"], "shadow", "{preview}");
    assert!(str_of(&preview["note"]).contains("sends nothing"));

    let (_, report) = b::run(&server, &period, settled).await;
    assert_eq!(report["mode"], "shadow", "{report}");
    assert_eq!(report["recorded"], 1);
    assert_eq!(report["created"], 0);
    let r = b::record(&server, "shadow-a", &period).await;
    assert_eq!(r["shadow"], true, "{r}");
    assert_eq!(str_of(&r["charge"]["amount"]), "2.33");
    assert_eq!(
        relay.count("POST", "/v1/invoiceitems"),
        0,
        "nothing reached Stripe"
    );
    assert_eq!(relay.lists(), 0);

    // Bad input changes nothing.
    let (status, _) = common::admin_send(
        &server,
        reqwest::Method::PUT,
        "/admin/modes",
        serde_json::json!({ "billing": "off" }),
    )
    .await;
    assert_eq!(status, 422);

    // Cut-over: the same record is charged, once.
    common::admin_send(
        &server,
        reqwest::Method::PUT,
        "/admin/modes",
        serde_json::json!({ "billing": "live" }),
    )
    .await;
    let (_, live) = b::run(&server, &period, settled + 1_000).await;
    assert_eq!(live["created"], 1, "{live}");
    let (_, again) = b::run(&server, &period, settled + 2_000).await;
    assert_eq!(again["created"], 0, "{again}");
    assert_eq!(relay.items().len(), 1);
    let r = b::record(&server, "shadow-a", &period).await;
    assert_eq!(
        (r["state"].as_str(), r["shadow"].as_bool()),
        (Some("pushed"), Some(false))
    );
}
