//! Store conformance: one suite of cases that every [`Store`] must pass.
//!
//! Each case uses its own organization ids (and periods, where the data is
//! global) so cases never see each other's records. The suite runs against
//! the embedded redb store in a temporary directory and against a real
//! MongoDB-wire server (FerretDB in development), in a fresh database per run.
//!
//! `DYNABASE_TEST_MONGODB_URL` picks the server (default
//! `mongodb://127.0.0.1:27017`). If it cannot be reached the Mongo test is
//! skipped locally, but fails when `CI=true`.

use std::{
    future::Future,
    time::{SystemTime, UNIX_EPOCH},
};

use dynabase::adapters::store::{EmbeddedStore, MongoStore, MongoStoreError};
use dynabase_actors::{
    domain::{
        billing::SubscriptionOrder,
        compute::{ComputeSpec, Phase},
        jobs::{Job, JobKind, JobStatus},
        organization::LifecycleState,
        records::{
            CalibrationRecord, Notification, Period, ProcessedEvent, TierChange, UsageAdjustment,
            UsageRecord, Write,
        },
        spend::{CapAction, CapReached, FreeOverage, SpendCap},
    },
    OrgId, Organization, PendingTierChange, Store, StoreError, Tier, UnixMillis, Upstream,
};
use rust_decimal::Decimal;

#[path = "store_conformance/billing_cases.rs"]
mod billing_cases;

// ----- fixtures -------------------------------------------------------------

fn id(s: &str) -> OrgId {
    OrgId::parse(s).expect("test org id is valid")
}

fn period(s: &str) -> Period {
    Period::parse(s).expect("test period is valid")
}

fn dec(s: &str) -> Decimal {
    s.parse().expect("test decimal is valid")
}

fn org(org_id: &str) -> Organization {
    Organization {
        id: id(org_id),
        name: format!("Org {org_id}"),
        tier: Tier::Starter,
        upstream: Upstream::parse("db.internal:5432").expect("valid upstream"),
        stripe_customer_id: Some(format!("cus_{org_id}")),
        stripe_subscription_id: Some(format!("sub_{org_id}")),
        pending_tier_change: Some(PendingTierChange {
            to: Tier::Free,
            effective_at: UnixMillis(1_700_000_600_000),
            reason: "downgrade requested".to_owned(),
        }),
        created_at: UnixMillis(1_700_000_000_000),
        updated_at: UnixMillis(1_700_000_000_500),
        lifecycle: LifecycleState {
            past_due_since: Some(UnixMillis(1_700_000_000_250)),
            notification_url: Some(format!("https://hooks.example/{org_id}")),
            spend_cap: Some(SpendCap {
                amount: "12.50".parse().expect("amount"),
                action: CapAction::Refuse,
                set_by: "customer".into(),
            }),
            cap_reached: Some(CapReached {
                period: Period::parse("2026-11").expect("period"),
                at: UnixMillis(1_700_000_000_500),
            }),
            free_overage: Some(FreeOverage {
                period: Period::parse("2026-11").expect("period"),
                since: UnixMillis(1_700_000_000_600),
                enforce_from: UnixMillis(1_700_604_800_600),
            }),
            railway_service_id: Some(format!("svc-{org_id}")),
            enforcement: Some(dynabase_actors::tenant::enforcement::Enforcement::Shadow),
        },
        compute: dynabase_actors::domain::compute::Compute {
            spec: dynabase_actors::domain::compute::ComputeSpec::Local {
                data_dir: format!("/var/lib/tenants/{org_id}"),
                port: 15432,
                pg_bin: None,
            },
            state: dynabase_actors::domain::compute::ComputeState {
                phase: dynabase_actors::domain::compute::Phase::Suspended,
                since: UnixMillis(1_700_000_000_700),
                last_error: Some("wake command exited with status 1".into()),
                cold_starts: 3,
                last_wake_ms: Some(180),
            },
        },
    }
}

fn usage(key: &str, org_id: &str, p: &str, window: i64, cycles: u64, vcpu: &str) -> UsageRecord {
    UsageRecord {
        key: key.to_owned(),
        org: id(org_id),
        database: "app".to_owned(),
        period: period(p),
        window_start: UnixMillis(window),
        query_cycles: cycles,
        duration_us: cycles * 10,
        vcpu_hours: dec(vcpu),
        gb_hours: dec("0.25"),
    }
}

fn calibration(p: &str) -> CalibrationRecord {
    CalibrationRecord {
        period: period(p),
        source: "manual".into(),
        railway_bill: Some(dec("123.45")),
        measured_vcpu_minutes: None,
        measured_gb_minutes: Some(dec("600.25")),
        estimated_vcpu_hours: dec("1000.5"),
        estimated_gb_hours: dec("20"),
        default_rate: dec("0.10"),
        actual_rate: Some(dec("0.1233")),
        variance: Some(dec("0.0233")),
        default_gb_rate: dec("0.01386"),
        actual_gb_rate: None,
        gb_variance: None,
        threshold: dec("0.2"),
        alert: false,
        by_tier: Vec::new(),
        by_org: Vec::new(),
        suggestion: None,
        note: Some("a note".into()),
        created_at: UnixMillis(1_700_000_000_000),
    }
}

fn notification(key: &str, org_id: &str, created: i64) -> Notification {
    Notification {
        key: key.to_owned(),
        org: id(org_id),
        kind: "usage-warning".to_owned(),
        message: format!("message {key}"),
        created_at: UnixMillis(created),
    }
}

fn tier_change(org_id: &str, from: Tier, to: Tier, at: i64, source: &str) -> TierChange {
    TierChange {
        org: id(org_id),
        from,
        to,
        source: source.to_owned(),
        reason: format!("because {source}"),
        at: UnixMillis(at),
    }
}

/// What the billing code does with usage: add it up.
fn totals(records: &[UsageRecord]) -> (u64, Decimal) {
    records.iter().fold((0, Decimal::ZERO), |(c, v), r| {
        (c + r.query_cycles, v + r.vcpu_hours)
    })
}

// ----- cases ----------------------------------------------------------------

async fn case_org_round_trip(store: &dyn Store) {
    let mut b = org("rt-b");
    let a = org("rt-a");
    // Created out of order to check that listing sorts by id.
    store.create_org(&b).await.expect("create rt-b");
    store.create_org(&a).await.expect("create rt-a");

    let got = store.get_org(&a.id).await.expect("get rt-a");
    assert_eq!(got.as_ref(), Some(&a), "all fields survive a round trip");

    let all = store.list_orgs().await.expect("list");
    let ids: Vec<&str> = all.iter().map(|o| o.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "orgs are listed by id");
    let mine: Vec<&Organization> = all
        .iter()
        .filter(|o| o.id.as_str().starts_with("rt-"))
        .collect();
    assert_eq!(mine, vec![&a, &b]);

    b.tier = Tier::Enterprise;
    b.name = "Renamed".to_owned();
    b.pending_tier_change = None;
    b.stripe_customer_id = None;
    b.stripe_subscription_id = Some("sub_new".to_owned());
    b.upstream = Upstream::parse("[::1]:6543").expect("valid upstream");
    b.updated_at = UnixMillis(1_800_000_000_000);
    store.update_org(&b).await.expect("update rt-b");
    assert_eq!(store.get_org(&b.id).await.expect("get rt-b"), Some(b));
}

async fn case_duplicate_create(store: &dyn Store) {
    let original = org("dup");
    store.create_org(&original).await.expect("first create");
    let mut again = original.clone();
    again.name = "Impostor".to_owned();
    match store.create_org(&again).await {
        Err(StoreError::Duplicate(dup)) => assert_eq!(dup, original.id),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    assert_eq!(
        store.get_org(&original.id).await.expect("get"),
        Some(original),
        "a refused create leaves the stored org alone"
    );
}

async fn case_update_missing(store: &dyn Store) {
    let ghost = org("ghost-update");
    match store.update_org(&ghost).await {
        Err(StoreError::NotFound(missing)) => assert_eq!(missing, ghost.id),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(store.get_org(&ghost.id).await.expect("get"), None);
}

async fn case_get_missing(store: &dyn Store) {
    assert_eq!(store.get_org(&id("nobody-here")).await.expect("get"), None);
}

async fn case_usage_is_idempotent(store: &dyn Store) {
    let p = period("2026-04");
    let first = usage("r1/use-a/1000/1", "use-a", "2026-04", 1_000, 40, "1.5");
    let second = usage("r1/use-a/2000/1", "use-a", "2026-04", 2_000, 60, "2.25");
    // Written out of window order to check the listing order.
    assert_eq!(
        store.record_usage(&second).await.expect("second"),
        Write::Applied
    );
    assert_eq!(
        store.record_usage(&first).await.expect("first"),
        Write::Applied
    );

    let listed = store
        .usage_for_period(&id("use-a"), &p)
        .await
        .expect("list");
    assert_eq!(
        listed,
        vec![first.clone(), second.clone()],
        "ordered by window"
    );
    assert_eq!(totals(&listed), (100, dec("3.75")));

    // The acknowledgement of `first` was lost and the writer retries it.
    assert_eq!(
        store.record_usage(&first).await.expect("retry"),
        Write::AlreadyApplied
    );
    // A retry that was re-measured differently still does not count twice.
    let mut drifted = first.clone();
    drifted.query_cycles = 999;
    drifted.vcpu_hours = dec("9.9");
    assert_eq!(
        store.record_usage(&drifted).await.expect("drifted retry"),
        Write::AlreadyApplied
    );

    let after = store
        .usage_for_period(&id("use-a"), &p)
        .await
        .expect("list");
    assert_eq!(totals(&after), (100, dec("3.75")), "no double counting");
    assert_eq!(after, listed);
}

async fn case_usage_is_scoped(store: &dyn Store) {
    let mine = usage("r1/scope-a/1", "scope-a", "2026-05", 1_000, 5, "0.5");
    let other_org = usage("r1/scope-a2/1", "scope-a2", "2026-05", 1_000, 7, "0.7");
    let other_period = usage("r1/scope-a/2", "scope-a", "2026-06", 1_000, 9, "0.9");
    for r in [&mine, &other_org, &other_period] {
        assert_eq!(store.record_usage(r).await.expect("record"), Write::Applied);
    }
    let listed = store
        .usage_for_period(&id("scope-a"), &period("2026-05"))
        .await
        .expect("list");
    assert_eq!(listed, vec![mine]);
    let empty = store
        .usage_for_period(&id("scope-none"), &period("2026-05"))
        .await
        .expect("list");
    assert!(empty.is_empty());
}

async fn case_usage_batch_is_idempotent(store: &dyn Store) {
    let p = period("2026-08");
    let earlier = usage(
        "r1:batch-a:app:1000:1",
        "batch-a",
        "2026-08",
        1_000,
        3,
        "0.3",
    );
    assert_eq!(
        store.record_usage(&earlier).await.expect("single"),
        Write::Applied
    );
    let batch = vec![
        usage(
            "r1:batch-a:app:2000:2",
            "batch-a",
            "2026-08",
            2_000,
            5,
            "0.5",
        ),
        earlier.clone(),
        usage(
            "r1:batch-a:app:3000:2",
            "batch-a",
            "2026-08",
            3_000,
            7,
            "0.7",
        ),
    ];
    assert_eq!(
        store.record_usage_batch(&batch).await.expect("batch"),
        vec![Write::Applied, Write::AlreadyApplied, Write::Applied],
        "answers in the order of the records"
    );
    // The whole flush retried after a lost acknowledgement.
    assert_eq!(
        store.record_usage_batch(&batch).await.expect("retry"),
        vec![Write::AlreadyApplied; 3]
    );
    assert_eq!(
        store.record_usage_batch(&[]).await.expect("empty"),
        Vec::<Write>::new()
    );
    let listed = store
        .usage_for_period(&id("batch-a"), &p)
        .await
        .expect("list");
    assert_eq!(totals(&listed), (15, dec("1.5")), "no double counting");
}

fn adjustment(key: &str, org_id: &str, p: &str, hours: &str, at: i64) -> UsageAdjustment {
    UsageAdjustment {
        key: key.to_owned(),
        org: id(org_id),
        period: period(p),
        vcpu_hours: dec(hours),
        reason: format!("reason {key}"),
        by: "admin".to_owned(),
        created_at: UnixMillis(at),
    }
}

async fn case_adjustments_once_per_key(store: &dyn Store) {
    let late = adjustment("adj-a-2", "adj-a", "2026-09", "2.5", 200);
    let early = adjustment("adj-a-1", "adj-a", "2026-09", "-1.25", 100);
    let other_period = adjustment("adj-a-3", "adj-a", "2026-10", "9", 100);
    let other_org = adjustment("adj-b-1", "adj-b", "2026-09", "9", 100);
    for a in [&late, &early, &other_period, &other_org] {
        assert_eq!(
            store.add_usage_adjustment(a).await.expect("add"),
            Write::Applied
        );
    }
    let mut retried = early.clone();
    retried.vcpu_hours = dec("-100");
    assert_eq!(
        store.add_usage_adjustment(&retried).await.expect("retry"),
        Write::AlreadyApplied
    );
    let listed = store
        .usage_adjustments(&id("adj-a"), &period("2026-09"))
        .await
        .expect("list");
    assert_eq!(
        listed,
        vec![early, late],
        "oldest first, scoped, first wins"
    );
}

async fn case_api_token_hashes(store: &dyn Store) {
    let (a, b) = (id("tok-a"), id("tok-b"));
    match store.set_api_token_hash(&a, "h0").await {
        Err(StoreError::NotFound(missing)) => assert_eq!(missing, a),
        other => panic!("expected NotFound for an unknown org, got {other:?}"),
    }
    store.create_org(&org("tok-a")).await.expect("org a");
    store.create_org(&org("tok-b")).await.expect("org b");
    assert_eq!(store.api_token_hash(&a).await.expect("none yet"), None);
    store.set_api_token_hash(&a, "h1").await.expect("issue");
    store.set_api_token_hash(&b, "hb").await.expect("issue b");
    store.set_api_token_hash(&a, "h2").await.expect("rotate");
    assert_eq!(
        store.api_token_hash(&a).await.expect("a"),
        Some("h2".to_owned())
    );
    assert_eq!(
        store.api_token_hash(&b).await.expect("b"),
        Some("hb".to_owned())
    );
}

async fn case_webhook_event_once(store: &dyn Store) {
    let event = ProcessedEvent {
        event_id: "evt_conformance_1".to_owned(),
        event_type: "invoice.paid".to_owned(),
        received_at: UnixMillis(1_700_000_000_000),
    };
    assert_eq!(
        store.mark_event_processed(&event).await.expect("first"),
        Write::Applied
    );
    assert_eq!(
        store.mark_event_processed(&event).await.expect("second"),
        Write::AlreadyApplied
    );
}

async fn case_calibration_once_per_period(store: &dyn Store) {
    let march = calibration("2025-03");
    let january = calibration("2025-01");
    assert_eq!(
        store.record_calibration(&march).await.expect("march"),
        Write::Applied
    );
    assert_eq!(
        store.record_calibration(&january).await.expect("january"),
        Write::Applied
    );
    let mut second_march = calibration("2025-03");
    second_march.railway_bill = Some(dec("1"));
    assert_eq!(
        store
            .record_calibration(&second_march)
            .await
            .expect("again"),
        Write::AlreadyApplied
    );

    let all = store.calibrations().await.expect("list");
    let periods: Vec<&str> = all.iter().map(|c| c.period.as_str()).collect();
    let mut sorted = periods.clone();
    sorted.sort_unstable();
    assert_eq!(periods, sorted, "calibrations are listed by period");
    let mine: Vec<&CalibrationRecord> = all
        .iter()
        .filter(|c| c.period.as_str().starts_with("2025-"))
        .collect();
    assert_eq!(mine, vec![&january, &march]);
    // Replacing supersedes.
    store
        .replace_calibration(&second_march)
        .await
        .expect("replace");
    let all = store.calibrations().await.expect("list");
    assert!(all.contains(&second_march) && !all.contains(&march));
}

async fn case_notifications_dedupe_per_org(store: &dyn Store) {
    let late = notification("note-a-late", "note-a", 200);
    let first = notification("note-a-1", "note-a", 100);
    let second = notification("note-a-2", "note-a", 100);
    let foreign = notification("note-b-1", "note-b", 50);
    for n in [&late, &first, &second, &foreign] {
        assert_eq!(
            store.add_notification(n).await.expect("add"),
            Write::Applied
        );
    }
    let mut again = first.clone();
    again.message = "changed".to_owned();
    assert_eq!(
        store.add_notification(&again).await.expect("again"),
        Write::AlreadyApplied
    );
    let listed = store
        .notifications_for_org(&id("note-a"))
        .await
        .expect("list");
    assert_eq!(
        listed,
        vec![first, second, late],
        "by created_at, then insertion order; other orgs excluded"
    );
}

async fn case_tier_history_oldest_first(store: &dyn Store) {
    let latest = tier_change("hist-a", Tier::Starter, Tier::Pro, 300, "admin");
    let first = tier_change("hist-a", Tier::Free, Tier::Starter, 100, "stripe:evt_1");
    let same_instant = tier_change("hist-a", Tier::Starter, Tier::Free, 100, "lifecycle");
    let foreign = tier_change("hist-b", Tier::Free, Tier::Pro, 150, "admin");
    for c in [&latest, &first, &same_instant, &foreign] {
        store.append_tier_change(c).await.expect("append");
    }
    let history = store.tier_history(&id("hist-a")).await.expect("history");
    assert_eq!(history, vec![first, same_instant, latest]);
    assert!(store
        .tier_history(&id("hist-none"))
        .await
        .expect("empty")
        .is_empty());
}

async fn case_org_compare_and_set(store: &dyn Store) {
    let original = org("cas-a");
    store.create_org(&original).await.expect("create");
    let mut first = original.clone();
    first.tier = Tier::Pro;
    first.updated_at = UnixMillis(original.updated_at.0 + 1);
    assert!(store
        .update_org_if_unchanged(&first, original.updated_at)
        .await
        .expect("first writer"));
    // A second writer that read the same version loses and changes nothing.
    let mut second = original.clone();
    second.tier = Tier::Free;
    second.updated_at = UnixMillis(original.updated_at.0 + 1);
    assert!(!store
        .update_org_if_unchanged(&second, original.updated_at)
        .await
        .expect("second writer"));
    assert_eq!(store.get_org(&original.id).await.expect("get"), Some(first));
    match store
        .update_org_if_unchanged(&org("cas-ghost"), UnixMillis(1))
        .await
    {
        Err(StoreError::NotFound(id)) => assert_eq!(id.as_str(), "cas-ghost"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

async fn case_org_by_stripe_customer(store: &dyn Store) {
    let linked = org("link-a");
    store.create_org(&linked).await.expect("create");
    assert_eq!(
        store
            .org_by_stripe_customer("cus_link-a")
            .await
            .expect("lookup"),
        Some(linked)
    );
    assert_eq!(
        store
            .org_by_stripe_customer("cus_nobody")
            .await
            .expect("lookup"),
        None
    );
}

async fn case_subscription_events_in_order(store: &dyn Store) {
    let sub = "sub_order_a";
    let current = SubscriptionOrder::Current;
    assert_eq!(
        store
            .record_subscription_event(sub, 100, "evt_1")
            .await
            .expect("first"),
        current
    );
    assert_eq!(
        store
            .record_subscription_event(sub, 200, "evt_2")
            .await
            .expect("newer"),
        current
    );
    assert_eq!(
        store
            .record_subscription_event(sub, 150, "evt_3")
            .await
            .expect("older"),
        SubscriptionOrder::Stale {
            applied_created: 200,
            applied_event_id: "evt_2".to_owned()
        },
        "an older event is refused and names the newer one"
    );
    // A retry of the applied event, and another event of the same second,
    // both pass.
    assert_eq!(
        store
            .record_subscription_event(sub, 200, "evt_2")
            .await
            .expect("retry"),
        current
    );
    assert_eq!(
        store
            .record_subscription_event(sub, 200, "evt_4")
            .await
            .expect("same second"),
        current
    );
    // Subscriptions are independent.
    assert_eq!(
        store
            .record_subscription_event("sub_order_b", 1, "evt_5")
            .await
            .expect("other"),
        current
    );
}

fn job(id: &str, kind: JobKind, created: i64, due: i64) -> Job {
    Job::new(
        id.to_owned(),
        kind,
        Some(self::id("jobs-a")),
        format!("{{\"job\":\"{id}\"}}"),
        UnixMillis(created),
        UnixMillis(due),
    )
}

async fn case_jobs_claimed_once_and_retried(store: &dyn Store) {
    let first = job("job-1", JobKind::BillingEvent, 10, 100);
    let second = job("job-2", JobKind::BillingEvent, 20, 50);
    let other_kind = job("job-3", JobKind::NotificationDelivery, 5, 0);
    let later = job("job-4", JobKind::BillingEvent, 30, 1_000);
    for j in [&first, &second, &other_kind, &later] {
        assert_eq!(store.enqueue_job(j).await.expect("enqueue"), Write::Applied);
    }
    let mut changed = first.clone();
    changed.payload = "{}".to_owned();
    assert_eq!(
        store.enqueue_job(&changed).await.expect("again"),
        Write::AlreadyApplied,
        "a job id is enqueued once"
    );
    assert_eq!(
        store.get_job("job-1").await.expect("get"),
        Some(first.clone())
    );
    assert_eq!(store.get_job("job-none").await.expect("get"), None);

    // Due at 100: the first two, oldest first, leased until 500.
    let claimed = store
        .claim_due_jobs(JobKind::BillingEvent, UnixMillis(100), UnixMillis(500), 10)
        .await
        .expect("claim");
    let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["job-1", "job-2"]);
    assert!(claimed
        .iter()
        .all(|j| j.attempts == 1 && j.next_attempt_at == UnixMillis(500)));
    assert_eq!(
        store.get_job("job-2").await.expect("get"),
        Some(claimed[1].clone())
    );
    // Leased: nobody else gets them.
    assert!(store
        .claim_due_jobs(JobKind::BillingEvent, UnixMillis(100), UnixMillis(500), 10)
        .await
        .expect("claim again")
        .is_empty());

    // The first is done; the second's runner died, so its lease runs out.
    let mut done = claimed[0].clone();
    done.finish(JobStatus::Done, "applied", UnixMillis(120));
    store.update_job(&done).await.expect("update");
    let reclaimed = store
        .claim_due_jobs(JobKind::BillingEvent, UnixMillis(600), UnixMillis(700), 1)
        .await
        .expect("reclaim");
    assert_eq!(reclaimed.len(), 1, "the limit is respected");
    assert_eq!(
        (reclaimed[0].id.as_str(), reclaimed[0].attempts),
        ("job-2", 2)
    );
    let mut retry = reclaimed[0].clone();
    retry.retry_at(UnixMillis(2_000), "store unavailable", UnixMillis(610));
    store.update_job(&retry).await.expect("retry later");
    let at_1500: Vec<String> = store
        .claim_due_jobs(
            JobKind::BillingEvent,
            UnixMillis(1_500),
            UnixMillis(1_600),
            10,
        )
        .await
        .expect("claim")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(at_1500, ["job-4"], "done jobs never, retried ones when due");
    assert_eq!(store.get_job("job-1").await.expect("get"), Some(done));
    let notifications = store
        .claim_due_jobs(
            JobKind::NotificationDelivery,
            UnixMillis(0),
            UnixMillis(1),
            10,
        )
        .await
        .expect("claim other kind");
    assert_eq!(notifications.len(), 1);
    let ghost = job("job-ghost", JobKind::BillingEvent, 0, 0);
    assert!(
        store.update_job(&ghost).await.is_err(),
        "unknown jobs are not created by update"
    );
}

/// Writes one of everything before the store is closed and opened again.
async fn case_persist_write(store: &dyn Store) {
    store.create_org(&org("keep")).await.expect("org");
    store
        .record_usage(&usage("keep/u1", "keep", "2026-07", 1_000, 11, "1.1"))
        .await
        .expect("usage");
    store
        .mark_event_processed(&ProcessedEvent {
            event_id: "evt_keep".to_owned(),
            event_type: "customer.updated".to_owned(),
            received_at: UnixMillis(5),
        })
        .await
        .expect("event");
    store
        .record_calibration(&calibration("2024-07"))
        .await
        .expect("calibration");
    store
        .add_notification(&notification("keep-note", "keep", 10))
        .await
        .expect("notification");
    store
        .append_tier_change(&tier_change("keep", Tier::Free, Tier::Pro, 10, "first"))
        .await
        .expect("tier change");
    store
        .enqueue_job(&job("keep-job", JobKind::BillingEvent, 1, 5))
        .await
        .expect("job");
    store
        .record_subscription_event("sub_keep", 50, "evt_keep_sub")
        .await
        .expect("subscription event");
    store
        .add_usage_adjustment(&adjustment("keep-adj", "keep", "2026-07", "0.5", 10))
        .await
        .expect("adjustment");
    store
        .set_api_token_hash(&id("keep"), "kept-hash")
        .await
        .expect("token");
}

/// Checks, after reopening, that everything `case_persist_write` wrote is
/// there and still deduplicates.
async fn case_persist_check(store: &dyn Store) {
    store.ping().await.expect("ping after reopen");
    assert_eq!(
        store.get_org(&id("keep")).await.expect("org"),
        Some(org("keep"))
    );
    let used = store
        .usage_for_period(&id("keep"), &period("2026-07"))
        .await
        .expect("usage");
    assert_eq!(totals(&used), (11, dec("1.1")));
    assert_eq!(
        store
            .record_usage(&usage("keep/u1", "keep", "2026-07", 1_000, 11, "1.1"))
            .await
            .expect("usage retry"),
        Write::AlreadyApplied
    );
    let event = ProcessedEvent {
        event_id: "evt_keep".to_owned(),
        event_type: "customer.updated".to_owned(),
        received_at: UnixMillis(5),
    };
    assert_eq!(
        store.mark_event_processed(&event).await.expect("event"),
        Write::AlreadyApplied
    );
    let total = store
        .period_total(&id("keep"), &period("2026-07"))
        .await
        .expect("period total");
    assert_eq!(
        (total.units.query_cycles, total.vcpu_hours()),
        (11, dec("1.1")),
        "the period total persists and the retry added nothing"
    );
    assert_eq!(
        store
            .record_calibration(&calibration("2024-07"))
            .await
            .expect("calibration"),
        Write::AlreadyApplied
    );
    assert_eq!(
        store
            .add_notification(&notification("keep-note", "keep", 10))
            .await
            .expect("notification"),
        Write::AlreadyApplied
    );
    assert_eq!(
        store
            .usage_adjustments(&id("keep"), &period("2026-07"))
            .await
            .expect("adjustments"),
        vec![adjustment("keep-adj", "keep", "2026-07", "0.5", 10)]
    );
    assert_eq!(
        store.api_token_hash(&id("keep")).await.expect("token"),
        Some("kept-hash".to_owned())
    );
    // A change at the same instant after reopening still sorts after the old
    // one: the tie-breaker survives the restart.
    let second = tier_change("keep", Tier::Pro, Tier::Enterprise, 10, "second");
    store
        .append_tier_change(&second)
        .await
        .expect("tier change");
    assert_eq!(
        store.tier_history(&id("keep")).await.expect("history"),
        vec![
            tier_change("keep", Tier::Free, Tier::Pro, 10, "first"),
            second
        ]
    );
    // Pending work and subscription order survive the restart.
    let pending = store
        .claim_due_jobs(JobKind::BillingEvent, UnixMillis(5), UnixMillis(9), 10)
        .await
        .expect("claim after reopen");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, "keep-job");
    assert!(matches!(
        store
            .record_subscription_event("sub_keep", 40, "evt_older")
            .await
            .expect("order after reopen"),
        SubscriptionOrder::Stale { .. }
    ));
}

async fn case_orgs_with_lifecycle_due(store: &dyn Store) {
    const NOW: i64 = 1_800_000_000_000;
    const GRACE_START: i64 = NOW - 3 * 24 * 3600 * 1000;
    let variant = |org_id: &str, pending_at: Option<i64>, past_due: Option<i64>| {
        let mut o = org(org_id);
        o.pending_tier_change = pending_at.map(|at| PendingTierChange {
            to: Tier::Free,
            effective_at: UnixMillis(at),
            reason: "downgrade requested".to_owned(),
        });
        o.lifecycle.past_due_since = past_due.map(UnixMillis);
        o
    };
    for o in [
        variant("due-now", Some(NOW), None),
        variant("due-later", Some(NOW + 1), None),
        variant("due-past-grace", None, Some(GRACE_START)),
        variant("due-in-grace", None, Some(GRACE_START + 1)),
        variant("due-nothing", None, None),
        variant("due-both", Some(NOW - 1), Some(GRACE_START - 1)),
    ] {
        store.create_org(&o).await.expect("create");
    }
    let found = store
        .orgs_with_lifecycle_due(UnixMillis(NOW), UnixMillis(GRACE_START))
        .await
        .expect("orgs with lifecycle due");
    // Other cases' organizations are in the same store: only these six count.
    let mine: Vec<&str> = found
        .iter()
        .map(|o| o.id.as_str())
        .filter(|id| id.starts_with("due-"))
        .collect();
    assert_eq!(mine, ["due-both", "due-now", "due-past-grace"]);
    let both = found.iter().find(|o| o.id.as_str() == "due-both");
    assert_eq!(
        both,
        Some(&variant("due-both", Some(NOW - 1), Some(GRACE_START - 1)))
    );
}

async fn case_awake_suspendable_orgs(store: &dyn Store) {
    let variant = |org_id: &str, spec: ComputeSpec, phase: Phase| {
        let mut o = org(org_id);
        o.compute.spec = spec;
        o.compute.state.phase = phase;
        o.compute.state.since = UnixMillis(1_800_000_000_000);
        o.created_at = UnixMillis(1_800_000_000_000);
        o
    };
    let local = || ComputeSpec::Local {
        data_dir: "/var/lib/dynabase/s2z".to_owned(),
        port: 55432,
        pg_bin: None,
    };
    let command = || ComputeSpec::Command {
        suspend: "true".to_owned(),
        wake: "true".to_owned(),
        status: None,
        timeout_ms: 1_000,
    };
    for o in [
        variant("s2z-always-on", ComputeSpec::AlwaysOn, Phase::Active),
        variant("s2z-active", local(), Phase::Active),
        variant("s2z-suspending", command(), Phase::Suspending),
        variant("s2z-suspended", local(), Phase::Suspended),
        variant("s2z-waking", local(), Phase::Waking),
        variant("s2z-suspended-cmd", command(), Phase::Suspended),
    ] {
        store.create_org(&o).await.expect("create");
    }
    let found = store
        .awake_suspendable_orgs()
        .await
        .expect("awake suspendable orgs");
    // Other cases' organizations (always on) are in the same store.
    let mine: Vec<&str> = found
        .iter()
        .map(|o| o.id.as_str())
        .filter(|id| id.starts_with("s2z-"))
        .collect();
    assert_eq!(mine, ["s2z-active", "s2z-suspending", "s2z-waking"]);
    assert!(found
        .iter()
        .all(|o| !o.id.as_str().starts_with("s2z-") || o.compute.spec.can_suspend()));
    // Counting by creation time agrees with a listing, whatever else is stored.
    let all = store.list_orgs().await.expect("list");
    for at in [0, 1_700_000_000_001, 1_800_000_000_000, i64::MAX] {
        let listed = all.iter().filter(|o| o.created_at < UnixMillis(at)).count();
        let counted = store
            .count_orgs_created_before(UnixMillis(at))
            .await
            .expect("count");
        assert_eq!(counted, listed, "created before {at}");
    }
    let waking = found.iter().find(|o| o.id.as_str() == "s2z-waking");
    assert_eq!(waking, Some(&variant("s2z-waking", local(), Phase::Waking)));
}

async fn case_billable_vcpu_hours(store: &dyn Store) {
    let records = [
        usage("bill-1", "bill-a", "2026-07", 1_000, 1, "1.5"),
        usage("bill-2", "bill-a", "2026-07", 2_000, 1, "2.25"),
        usage("bill-3", "bill-a", "2026-07", 3_000, 1, "0.000001"),
        usage("bill-4", "bill-a", "2026-08", 1_000, 1, "100"),
        usage("bill-5", "bill-b", "2026-07", 1_000, 1, "100"),
    ];
    store.record_usage_batch(&records).await.expect("record");
    for a in [
        adjustment("bill-adj-1", "bill-a", "2026-07", "-0.5", 100),
        adjustment("bill-adj-2", "bill-a", "2026-07", "1", 200),
        adjustment("bill-adj-3", "bill-b", "2026-07", "100", 100),
    ] {
        store.add_usage_adjustment(&a).await.expect("adjust");
    }
    let billable = store
        .billable_vcpu_hours(&id("bill-a"), &period("2026-07"))
        .await
        .expect("billable");
    assert_eq!(billable, dec("4.250001"), "exact, scoped to org and period");
    let none = store
        .billable_vcpu_hours(&id("bill-none"), &period("2026-07"))
        .await
        .expect("billable");
    assert!(none.is_zero());
}

/// Runs every case; `open` must return a store over the same data each time.
async fn run_suite<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Box<dyn Store>>,
{
    let store = open().await;
    store.ping().await.expect("ping");
    case_org_round_trip(&*store).await;
    case_duplicate_create(&*store).await;
    case_update_missing(&*store).await;
    case_get_missing(&*store).await;
    case_usage_is_idempotent(&*store).await;
    case_usage_is_scoped(&*store).await;
    case_usage_batch_is_idempotent(&*store).await;
    case_adjustments_once_per_key(&*store).await;
    case_billable_vcpu_hours(&*store).await;
    case_api_token_hashes(&*store).await;
    case_webhook_event_once(&*store).await;
    billing_cases::case_period_totals_add_each_record_once(&*store).await;
    billing_cases::case_cross_org_reads_for_a_period(&*store).await;
    billing_cases::case_billing_records(&*store).await;
    billing_cases::case_claims_are_exclusive(&*store).await;
    billing_cases::case_settings_are_shared_values(&*store).await;
    case_calibration_once_per_period(&*store).await;
    case_notifications_dedupe_per_org(&*store).await;
    case_tier_history_oldest_first(&*store).await;
    case_org_compare_and_set(&*store).await;
    case_org_by_stripe_customer(&*store).await;
    case_subscription_events_in_order(&*store).await;
    case_jobs_claimed_once_and_retried(&*store).await;
    case_orgs_with_lifecycle_due(&*store).await;
    case_awake_suspendable_orgs(&*store).await;
    case_persist_write(&*store).await;
    drop(store);

    let reopened = open().await;
    case_persist_check(&*reopened).await;
}

/// A writer that died after inserting its records (step 1 of
/// `mongo/period_totals.rs`), and one that died after adding them to the
/// total but before marking them (step 2): the retry of the same flush
/// brings the total to exactly the records' sum.
async fn totals_survive_a_writer_dying_half_way(store: &MongoStore) {
    use mongodb::bson::{doc, Document};
    let db = store.database();
    let records = db.collection::<Document>("tenantUsage");
    let totals = db.collection::<Document>("periodTotals");
    let died_after_insert = usage("half:1", "half", "2026-02", 1_000, 2, "1.5");
    let died_after_add = usage("half:2", "half", "2026-02", 2_000, 3, "2.25");
    let fresh = usage("half:3", "half", "2026-02", 3_000, 1, "0.25");
    store
        .record_usage_batch(&[died_after_insert.clone(), died_after_add.clone()])
        .await
        .expect("write");
    // Undo what the dead writers did not get to: both unmarked, the first
    // not in the total, the second still on `applied`.
    records
        .update_many(
            doc! { "_id": { "$in": ["half:1", "half:2"] } },
            doc! { "$set": { "totaled": false } },
        )
        .await
        .expect("unmark");
    totals
        .update_one(
            doc! { "_id": "2026-02/half" },
            doc! {
                "$inc": { "vcpuNs": -5_400_000_000_000_i64, "queryCycles": -2_i64,
                          "durationUs": -20_i64, "memMbUs": -921_600_000_000_i64, "records": -1_i64 },
                "$push": { "applied": "half:2" },
            },
        )
        .await
        .expect("half-apply");
    let retried = store
        .record_usage_batch(&[died_after_insert, died_after_add, fresh])
        .await
        .expect("retry");
    assert_eq!(
        retried,
        vec![Write::AlreadyApplied, Write::AlreadyApplied, Write::Applied]
    );
    let total = store
        .period_total(&id("half"), &period("2026-02"))
        .await
        .expect("total");
    assert_eq!(total.vcpu_hours(), dec("4"), "1.5 + 2.25 + 0.25, each once");
    assert_eq!(total.records, 3);
    let doc = totals
        .find_one(doc! { "_id": "2026-02/half" })
        .await
        .expect("read")
        .expect("total doc");
    assert_eq!(
        doc.get_array("applied").map(Vec::len).unwrap_or(0),
        0,
        "keys of finished writes are pulled again"
    );
}

// ----- the stores -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A subdirectory that does not exist yet: `open` must create it.
    let data = dir.path().join("data");
    run_suite(|| {
        let data = data.clone();
        async move {
            let store = EmbeddedStore::open(&data).expect("open embedded store");
            Box::new(store) as Box<dyn Store>
        }
    })
    .await;
    assert!(data.join("dynabase.redb").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_store_conforms() {
    let url = std::env::var("DYNABASE_TEST_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017".to_owned());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let database = format!("dynabase_test_{}_{nanos}", std::process::id());

    let store = match MongoStore::connect(&url, &database).await {
        Ok(store) => store,
        Err(MongoStoreError::Unreachable(e)) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "CI requires the MongoDB-wire server at {url}; \
                     run scripts/services.sh start ({e})"
                );
            }
            eprintln!(
                "SKIP mongo_store_conforms: no MongoDB-wire server at {url} ({e}); \
                 run scripts/services.sh start"
            );
            return;
        }
        Err(e) => panic!("connecting to {url}: {e}"),
    };
    let admin = store.database().clone();
    drop(store);
    // The secondary indexes were created (the server keeps `_id` itself).
    for (collection, expected) in [
        ("tenantUsage", "org_1_period_1"),
        ("usageAdjustments", "org_1_period_1"),
        ("periodTotals", "period_1"),
        ("billingRecords", "state_1_nextAttemptAt_1"),
        ("notifications", "org_1_createdAt_1"),
        ("tierChanges", "org_1_at_1"),
        ("organizations", "stripeCustomerId_1"),
        ("jobs", "kind_1_status_1_nextAttemptAt_1"),
    ] {
        let names = admin
            .collection::<mongodb::bson::Document>(collection)
            .list_index_names()
            .await
            .expect("list indexes");
        assert!(
            names.iter().any(|n| n == expected),
            "{collection} lacks index {expected}: {names:?}"
        );
    }

    run_suite(|| {
        let (url, database) = (url.clone(), database.clone());
        async move {
            let store = MongoStore::connect(&url, &database)
                .await
                .expect("reconnect to MongoDB");
            Box::new(store) as Box<dyn Store>
        }
    })
    .await;
    let store = MongoStore::connect(&url, &database)
        .await
        .expect("reconnect to MongoDB");
    totals_survive_a_writer_dying_half_way(&store).await;

    admin.drop().await.expect("drop test database");
}
