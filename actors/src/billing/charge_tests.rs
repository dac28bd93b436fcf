//! The worked examples of `docs/billing.md`, to the cent.

use rust_decimal::Decimal;

use super::*;
use crate::domain::{
    catalog::{SessionSettings, TierLimits},
    org_id::OrgId,
    period_total::{UsageUnits, VCPU_NS_PER_HOUR},
};

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// The default catalog (config/tiers.toml).
pub(crate) fn tiers_toml() -> TierCatalog {
    let tier = |tier, included: Option<&str>, rate: Option<&str>| TierLimits {
        tier,
        max_connections: 5,
        qps: None,
        burst: None,
        base_fee: None,
        included_vcpu_hours: included.map(dec),
        overage_per_vcpu_hour: rate.map(dec),
        scale_to_zero: false,
        session: SessionSettings {
            statement_timeout: "0".into(),
            work_mem: "4MB".into(),
            temp_buffers: "8MB".into(),
        },
    };
    TierCatalog::new(vec![
        tier(Tier::Free, Some("5"), None),
        tier(Tier::Starter, Some("25"), Some("0.15")),
        tier(Tier::Pro, Some("200"), Some("0.12")),
        tier(Tier::Enterprise, None, None),
    ])
    .unwrap()
}

fn nov() -> Period {
    Period::parse("2026-11").unwrap()
}

fn total(hours: &str) -> PeriodTotal {
    let ns = dec(hours) * Decimal::from(VCPU_NS_PER_HOUR);
    PeriodTotal {
        org: OrgId::parse("acme").unwrap(),
        period: nov(),
        units: UsageUnits {
            query_cycles: 1000,
            duration_us: 0,
            vcpu_ns: i64::try_from(ns).unwrap(),
            mem_mb_us: 0,
        },
        records: 10,
    }
}

fn change(from: Tier, to: Tier, day: i64) -> TierChange {
    TierChange {
        org: OrgId::parse("acme").unwrap(),
        from,
        to,
        source: "admin".into(),
        reason: "test".into(),
        at: UnixMillis(nov().start().0 + (day - 1) * 86_400_000),
    }
}

fn adjustment(hours: &str) -> UsageAdjustment {
    UsageAdjustment {
        key: "adj".into(),
        org: OrgId::parse("acme").unwrap(),
        period: nov(),
        vcpu_hours: dec(hours),
        reason: "credit".into(),
        by: "admin".into(),
        created_at: UnixMillis(0),
    }
}

struct Case<'a> {
    tier: Tier,
    changes: &'a [TierChange],
    hours: &'a str,
    adjustments: &'a [UsageAdjustment],
    cap: Option<&'a str>,
}

fn charge(c: Case<'_>) -> Charge {
    let catalog = tiers_toml();
    compute(&ChargeInput {
        period: &nov(),
        catalog: &catalog,
        current_tier: c.tier,
        changes: c.changes,
        total: &total(c.hours),
        adjustments: c.adjustments,
        spend_cap: c.cap.map(dec),
        currency: "usd",
    })
}

fn case(tier: Tier, hours: &str) -> Case<'_> {
    Case {
        tier,
        changes: &[],
        hours,
        adjustments: &[],
        cap: None,
    }
}

#[test]
fn starter_over_its_included_hours() {
    // 40.5 − 25 = 15.5 h × $0.15 = $2.325 → $2.33 (half up).
    let c = charge(case(Tier::Starter, "40.5"));
    assert_eq!(c.included_vcpu_hours, dec("25"));
    assert_eq!(c.overage_vcpu_hours, dec("15.5"));
    assert_eq!(c.amount, dec("2.33"));
    assert_eq!(c.amount_minor(), 233);
    assert_eq!(c.skip, None);
}

#[test]
fn pro_over_its_included_hours() {
    // 12.3456789 h × $0.12 = $1.481481468 → $1.48.
    let c = charge(case(Tier::Pro, "212.3456789"));
    assert_eq!(c.overage_vcpu_hours, dec("12.3456789"));
    assert_eq!(c.amount, dec("1.48"));
    assert_eq!(c.rate_tier, Some(Tier::Pro));
}

#[test]
fn free_has_no_overage_price() {
    let c = charge(case(Tier::Free, "7"));
    assert_eq!(c.overage_vcpu_hours, dec("2"));
    assert_eq!(c.amount, Decimal::ZERO);
    assert_eq!(c.skip, Some(SkipReason::NoOveragePrice));
}

#[test]
fn within_the_included_hours_nothing_is_charged() {
    let c = charge(case(Tier::Pro, "199.999999"));
    assert_eq!(c.skip, Some(SkipReason::NoOverage));
    assert_eq!(c.overage_vcpu_hours, Decimal::ZERO);
}

#[test]
fn a_mid_period_upgrade_prorates_the_included_hours() {
    // STARTER for 10 days, PRO for 20 of November's 30:
    // 25 × 10/30 + 200 × 20/30 = 141.666666… → 141.666667;
    // 150 − 141.666667 = 8.333333 h × $0.12 (PRO, the tier at the end)
    // = $0.99999996 → $1.00.
    let changes = [change(Tier::Starter, Tier::Pro, 11)];
    let c = charge(Case {
        changes: &changes,
        ..case(Tier::Pro, "150")
    });
    assert_eq!(c.segments.len(), 2);
    assert_eq!(c.included_vcpu_hours, dec("141.666667"));
    assert_eq!(c.overage_vcpu_hours, dec("8.333333"));
    assert_eq!(c.amount, dec("1.00"));
}

#[test]
fn a_free_org_that_upgraded_pays_the_paid_tiers_rate() {
    // FREE for 15 days, STARTER for 15: 5/2 + 25/2 = 15 included;
    // 20 − 15 = 5 h × $0.15 = $0.75.
    let changes = [change(Tier::Free, Tier::Starter, 16)];
    let c = charge(Case {
        changes: &changes,
        ..case(Tier::Starter, "20")
    });
    assert_eq!(c.included_vcpu_hours, dec("15"));
    assert_eq!(c.amount, dec("0.75"));
}

#[test]
fn a_downgrade_to_free_keeps_the_last_paid_rate() {
    // STARTER 20 days, FREE 10: 25 × 2/3 + 5/3 = 18.333333;
    // 30 − 18.333333 = 11.666667 h × $0.15 = $1.75000005 → $1.75.
    let changes = [change(Tier::Starter, Tier::Free, 21)];
    let c = charge(Case {
        changes: &changes,
        ..case(Tier::Free, "30")
    });
    assert_eq!(c.included_vcpu_hours, dec("18.333333"));
    assert_eq!(c.rate_tier, Some(Tier::Starter));
    assert_eq!(c.amount, dec("1.75"));
}

#[test]
fn an_adjustment_changes_the_total_before_rounding() {
    // 30 − 2.5 (credit) = 27.5; 2.5 h × $0.15 = $0.375 → $0.38.
    let adjustments = [adjustment("-2.5")];
    let c = charge(Case {
        adjustments: &adjustments,
        ..case(Tier::Starter, "30")
    });
    assert_eq!(c.total_vcpu_hours, dec("27.5"));
    assert_eq!(c.amount, dec("0.38"));
}

#[test]
fn the_spend_cap_bounds_the_charge() {
    // 100 h × $0.15 = $15.00, capped at $10.00.
    let c = charge(Case {
        cap: Some("10"),
        ..case(Tier::Starter, "125")
    });
    assert_eq!(c.uncapped_amount, dec("15.00"));
    assert_eq!(c.amount, dec("10.00"));
    assert_eq!(c.amount_minor(), 1000);
}

#[test]
fn contract_tiers_are_not_billed_here() {
    let c = charge(case(Tier::Enterprise, "5000"));
    assert_eq!(c.skip, Some(SkipReason::ByContract));
    // Time under contract covers its share of the usage.
    let changes = [change(Tier::Enterprise, Tier::Pro, 16)];
    let c = charge(Case {
        changes: &changes,
        ..case(Tier::Pro, "1000")
    });
    // 1000 / 2 (contract half) + 200 / 2 = 600 included; 400 × $0.12.
    assert_eq!(c.included_vcpu_hours, dec("600"));
    assert_eq!(c.amount, dec("48.00"));
}

#[test]
fn the_tier_at_an_instant_reads_the_history() {
    let changes = [
        change(Tier::Free, Tier::Starter, 5),
        change(Tier::Starter, Tier::Pro, 40),
    ];
    let at = |day: i64| UnixMillis(nov().start().0 + (day - 1) * 86_400_000);
    assert_eq!(tier_at(&changes, at(1), Tier::Pro), Tier::Free);
    assert_eq!(tier_at(&changes, at(10), Tier::Pro), Tier::Starter);
    assert_eq!(tier_at(&changes, at(45), Tier::Pro), Tier::Pro);
    assert_eq!(tier_at(&[], at(1), Tier::Pro), Tier::Pro);
    // A change after the period does not cut it.
    assert_eq!(segments(&nov(), &changes, Tier::Pro).len(), 2);
}
