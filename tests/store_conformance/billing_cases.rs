//! Conformance cases for period totals and billing records.

use dynabase_actors::{
    billing::charge::{Charge, SkipReason},
    domain::{
        billing_record::{billing_key, BillingRecord, BillingState},
        period_total::PeriodTotal,
        records::Write,
    },
    Store, Tier, UnixMillis,
};

use super::{adjustment, dec, id, period, tier_change, usage};

/// The total as reconciliation computes it from the records.
async fn recomputed(store: &dyn Store, org: &str, p: &str) -> PeriodTotal {
    let records = store
        .usage_for_period(&id(org), &period(p))
        .await
        .expect("records");
    PeriodTotal::of_records(id(org), period(p), &records)
}

pub async fn case_period_totals_add_each_record_once(store: &dyn Store) {
    let first = vec![
        usage("pt:1", "pt-a", "2026-05", 1_000, 2, "0.5"),
        usage("pt:2", "pt-a", "2026-05", 2_000, 3, "0.000000001"),
        usage("pt:3", "pt-b", "2026-05", 1_000, 4, "2"),
        usage("pt:4", "pt-a", "2026-06", 1_000, 5, "7"),
    ];
    store.record_usage_batch(&first).await.expect("first");
    // A retried flush, and one that overlaps it with new records.
    store.record_usage_batch(&first).await.expect("retry");
    let overlapping = vec![
        first[1].clone(),
        usage("pt:5", "pt-a", "2026-05", 3_000, 1, "0.25"),
    ];
    assert_eq!(
        store
            .record_usage_batch(&overlapping)
            .await
            .expect("overlap"),
        vec![Write::AlreadyApplied, Write::Applied]
    );
    store
        .record_usage(&usage("pt:6", "pt-a", "2026-05", 4_000, 1, "0.25"))
        .await
        .expect("single");

    let total = store
        .period_total(&id("pt-a"), &period("2026-05"))
        .await
        .expect("total");
    assert_eq!(total.records, 4);
    assert_eq!(total.units.query_cycles, 7);
    assert_eq!(total.vcpu_hours(), dec("1.000000001"));
    assert_eq!(total.gb_hours(), dec("1"), "4 × 0.25");
    assert_eq!(total, recomputed(store, "pt-a", "2026-05").await);

    let may = store.period_totals(&period("2026-05")).await.expect("all");
    let orgs: Vec<&str> = may.iter().map(|t| t.org.as_str()).collect();
    assert!(orgs.contains(&"pt-a") && orgs.contains(&"pt-b"));
    assert!(may.iter().all(|t| t.period == period("2026-05")));
    let none = store
        .period_total(&id("pt-none"), &period("2026-05"))
        .await
        .expect("none");
    assert_eq!(none.records, 0);

    // Repair replaces the total.
    let mut wrong = total.clone();
    wrong.units.vcpu_ns += 1;
    store.set_period_total(&wrong).await.expect("set");
    assert_ne!(
        store
            .period_total(&id("pt-a"), &period("2026-05"))
            .await
            .expect("read"),
        recomputed(store, "pt-a", "2026-05").await
    );
    store
        .set_period_total(&recomputed(store, "pt-a", "2026-05").await)
        .await
        .expect("repair");
    assert_eq!(
        store
            .period_total(&id("pt-a"), &period("2026-05"))
            .await
            .expect("read"),
        total
    );
}

pub async fn case_cross_org_reads_for_a_period(store: &dyn Store) {
    for a in [
        adjustment("xo-adj-2", "xo-b", "2026-04", "2", 200),
        adjustment("xo-adj-1", "xo-a", "2026-04", "-1", 100),
        adjustment("xo-adj-3", "xo-a", "2026-03", "5", 50),
    ] {
        store.add_usage_adjustment(&a).await.expect("adjust");
    }
    let april = store
        .adjustments_for_period(&period("2026-04"))
        .await
        .expect("april");
    let keys: Vec<&str> = april.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys, ["xo-adj-1", "xo-adj-2"], "every org, oldest first");

    let base = 4_000_000_000_000;
    for c in [
        tier_change("xo-a", Tier::Free, Tier::Pro, base + 20, "later"),
        tier_change("xo-b", Tier::Pro, Tier::Free, base + 10, "earlier"),
        tier_change("xo-a", Tier::Starter, Tier::Free, base - 10, "before"),
    ] {
        store.append_tier_change(&c).await.expect("change");
    }
    let since = store
        .tier_changes_since(UnixMillis(base))
        .await
        .expect("since");
    let reasons: Vec<&str> = since.iter().map(|c| c.reason.as_str()).collect();
    assert_eq!(reasons, ["because earlier", "because later"]);
}

fn charge(p: &str) -> Charge {
    Charge {
        period: period(p),
        tier: Tier::Starter,
        segments: Vec::new(),
        query_cycles: 10,
        measured_vcpu_hours: dec("40.5"),
        adjustments_vcpu_hours: dec("0"),
        total_vcpu_hours: dec("40.5"),
        gb_hours: dec("1.25"),
        included_vcpu_hours: dec("25"),
        overage_vcpu_hours: dec("15.5"),
        rate: Some(dec("0.15")),
        rate_tier: Some(Tier::Starter),
        uncapped_amount: dec("2.33"),
        spend_cap: None,
        amount: dec("2.33"),
        currency: "usd".into(),
        skip: None,
    }
}

fn record(org: &str, p: &str, state: BillingState, due: i64) -> BillingRecord {
    BillingRecord {
        key: billing_key(&id(org), &period(p)),
        org: id(org),
        period: period(p),
        state,
        skip: (state == BillingState::Skipped).then_some(SkipReason::NoOverage),
        charge: charge(p),
        shadow: false,
        customer_id: Some(format!("cus_{org}")),
        subscription_id: None,
        provider_item_id: None,
        provider_invoice_id: None,
        attempts: 0,
        next_attempt_at: UnixMillis(due),
        last_error: None,
        created_at: UnixMillis(1),
        updated_at: UnixMillis(1),
    }
}

pub async fn case_billing_records(store: &dyn Store) {
    let a_feb = record("br-a", "2025-02", BillingState::Computed, 100);
    let a_jan = record("br-a", "2025-01", BillingState::Skipped, 0);
    let b_feb = record("br-b", "2025-02", BillingState::Computed, 50);
    for r in [&a_feb, &a_jan, &b_feb] {
        assert_eq!(
            store.insert_billing_record(r).await.expect("insert"),
            Write::Applied
        );
    }
    let mut again = a_feb.clone();
    again.charge.amount = dec("99");
    assert_eq!(
        store.insert_billing_record(&again).await.expect("again"),
        Write::AlreadyApplied,
        "one record per org and period, first write wins"
    );
    assert_eq!(
        store
            .billing_record(&id("br-a"), &period("2025-02"))
            .await
            .expect("get"),
        Some(a_feb.clone())
    );
    let for_org = store
        .billing_records_for_org(&id("br-a"))
        .await
        .expect("org");
    assert_eq!(for_org, vec![a_jan.clone(), a_feb.clone()], "by period");
    let feb = store
        .billing_records_for_period(&period("2025-02"))
        .await
        .expect("period");
    assert_eq!(feb, vec![a_feb.clone(), b_feb.clone()], "by org");

    let due = store
        .due_billing_records(BillingState::Computed, UnixMillis(100), 10)
        .await
        .expect("due");
    let due: Vec<&str> = due.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(due, ["br-b:2025-02", "br-a:2025-02"], "oldest due first");
    let limited = store
        .due_billing_records(BillingState::Computed, UnixMillis(99), 10)
        .await
        .expect("due");
    assert_eq!(limited.len(), 1);

    // Compare-and-set: the second writer with the same view loses.
    let mut pushed = a_feb.clone();
    pushed.state = BillingState::Pushed;
    pushed.provider_item_id = Some("ii_br_a".into());
    pushed.updated_at = UnixMillis(2);
    assert!(store
        .update_billing_record_if_unchanged(&pushed, UnixMillis(1))
        .await
        .expect("cas"));
    let mut racing = a_feb.clone();
    racing.state = BillingState::Failed;
    racing.updated_at = UnixMillis(3);
    assert!(!store
        .update_billing_record_if_unchanged(&racing, UnixMillis(1))
        .await
        .expect("cas"));
    assert_eq!(
        store.billing_record_by_item("ii_br_a").await.expect("item"),
        Some(pushed)
    );
    assert_eq!(
        store.billing_record_by_item("ii_none").await.expect("item"),
        None
    );
    let mut ghost = record("br-ghost", "2025-02", BillingState::Pushed, 0);
    ghost.updated_at = UnixMillis(5);
    assert!(!store
        .update_billing_record_if_unchanged(&ghost, UnixMillis(1))
        .await
        .expect("ghost"));
}

pub async fn case_claims_are_exclusive(store: &dyn Store) {
    use dynabase_actors::store::Claim;
    let (now, until) = (UnixMillis(1_000), UnixMillis(5_000));
    assert_eq!(
        store.claim("claim-a#1", now, until).await.expect("claim"),
        Claim::Won
    );
    assert_eq!(
        store
            .claim("claim-a#1", now, UnixMillis(9_000))
            .await
            .expect("again"),
        Claim::Held(until),
        "the first holder's lease stands"
    );
    assert_eq!(
        store.claim("claim-a#2", now, until).await.expect("next"),
        Claim::Won
    );
    // Many at once: one wins (the property compare-and-set lacks on
    // FerretDB v1).
    for round in 0..5 {
        let name = format!("claim-race#{round}");
        let outcomes =
            futures_util::future::join_all((0..8).map(|_| store.claim(&name, now, until))).await;
        let won = outcomes
            .iter()
            .filter(|o| matches!(o, Ok(Claim::Won)))
            .count();
        assert_eq!(won, 1, "{outcomes:?}");
    }
}

pub async fn case_settings_are_shared_values(store: &dyn Store) {
    assert_eq!(store.setting("test.mode").await.expect("read"), None);
    store.set_setting("test.mode", "shadow").await.expect("set");
    store
        .set_setting("test.mode", "live")
        .await
        .expect("replace");
    assert_eq!(
        store.setting("test.mode").await.expect("read").as_deref(),
        Some("live")
    );
}
