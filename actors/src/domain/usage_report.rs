//! `UsageReport`: one organization's usage for one period, as operators and
//! customers read it: totals, per day, per database, adjustments, the tier's
//! included vCPU-hours, the share used, a projection to the end of the period
//! and the (projected) overage cost, all in exact decimal.
//!
//! Pure: the caller reads the records and passes the time in.

use std::collections::BTreeMap;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use super::{
    calendar::day_of,
    catalog::TierLimits,
    org_id::OrgId,
    records::{Period, UsageAdjustment, UsageRecord},
    tier::Tier,
    time::UnixMillis,
};

/// Money is shown in cents, rounded half away from zero.
const MONEY_DP: u32 = 2;
const PERCENT_DP: u32 = 2;
/// Projections are estimates; six places are plenty.
const PROJECTION_DP: u32 = 6;

/// Sums over some usage records.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageSums {
    pub query_cycles: u64,
    pub duration_seconds: Decimal,
    pub vcpu_hours: Decimal,
    pub gb_hours: Decimal,
}

impl UsageSums {
    fn add(&mut self, r: &UsageRecord) {
        self.query_cycles = self.query_cycles.saturating_add(r.query_cycles);
        self.duration_seconds += Decimal::new(i64::try_from(r.duration_us).unwrap_or(i64::MAX), 6);
        self.vcpu_hours += r.vcpu_hours;
        self.gb_hours += r.gb_hours;
    }

    fn normalized(mut self) -> Self {
        self.duration_seconds = self.duration_seconds.normalize();
        self.vcpu_hours = self.vcpu_hours.normalize();
        self.gb_hours = self.gb_hours.normalize();
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    #[serde(flatten)]
    pub usage: UsageSums,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatabaseUsage {
    pub database: String,
    #[serde(flatten)]
    pub usage: UsageSums,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageReport {
    pub org: OrgId,
    pub period: Period,
    pub tier: Tier,
    pub as_of: UnixMillis,
    /// What the proxy measured.
    pub measured: UsageSums,
    /// Sum of operator adjustments (negative = credit).
    pub adjustments_vcpu_hours: Decimal,
    /// measured + adjustments: what billing uses.
    pub total_vcpu_hours: Decimal,
    pub by_day: Vec<DayUsage>,
    pub by_database: Vec<DatabaseUsage>,
    pub adjustments: Vec<UsageAdjustment>,
    /// `None`: by contract.
    pub included_vcpu_hours: Option<Decimal>,
    pub percent_used: Option<Decimal>,
    /// The total extrapolated linearly to the end of the period.
    pub projected_vcpu_hours: Decimal,
    /// `None`: no overage is billed (FREE) or it is by contract.
    pub overage_per_vcpu_hour: Option<Decimal>,
    pub overage_vcpu_hours: Option<Decimal>,
    pub overage_cost: Option<Decimal>,
    pub projected_overage_vcpu_hours: Option<Decimal>,
    pub projected_overage_cost: Option<Decimal>,
    pub currency: &'static str,
}

/// Everything a report is made from.
pub struct ReportInput<'a> {
    pub org: &'a OrgId,
    pub limits: &'a TierLimits,
    pub period: &'a Period,
    pub records: &'a [UsageRecord],
    pub adjustments: Vec<UsageAdjustment>,
    pub now: UnixMillis,
}

/// measured + adjustments for a period; what warnings and billing compare
/// with the included hours.
pub fn billable_vcpu_hours(records: &[UsageRecord], adjustments: &[UsageAdjustment]) -> Decimal {
    adjusted_vcpu_hours(records.iter().map(|r| r.vcpu_hours).sum(), adjustments)
}

/// Measured vCPU-hours (already summed) plus the adjustments.
pub fn adjusted_vcpu_hours(measured: Decimal, adjustments: &[UsageAdjustment]) -> Decimal {
    measured + adjustments.iter().map(|a| a.vcpu_hours).sum::<Decimal>()
}

/// Cents, always written with two places ("0.00", "5.25").
fn money(d: Decimal) -> Decimal {
    let mut cents = d.round_dp_with_strategy(MONEY_DP, RoundingStrategy::MidpointAwayFromZero);
    cents.rescale(MONEY_DP);
    cents
}

/// `total` extrapolated from the elapsed part of the period to all of it;
/// past and future periods are what they are.
fn project(total: Decimal, period: &Period, now: UnixMillis) -> Decimal {
    let (start, end) = (period.start(), period.end());
    if now <= start || now >= end {
        return total;
    }
    let elapsed = Decimal::from(now.0 - start.0);
    let length = Decimal::from(end.0 - start.0);
    (total * length / elapsed).round_dp(PROJECTION_DP)
}

impl UsageReport {
    pub fn build(input: ReportInput<'_>) -> Self {
        let ReportInput {
            org,
            limits,
            period,
            records,
            adjustments,
            now,
        } = input;
        let mut measured = UsageSums::default();
        let mut by_day: BTreeMap<String, UsageSums> = BTreeMap::new();
        let mut by_database: BTreeMap<&str, UsageSums> = BTreeMap::new();
        for r in records {
            measured.add(r);
            by_day.entry(day_of(r.window_start)).or_default().add(r);
            by_database.entry(&r.database).or_default().add(r);
        }
        let adjustments_vcpu_hours: Decimal = adjustments.iter().map(|a| a.vcpu_hours).sum();
        let total = measured.vcpu_hours + adjustments_vcpu_hours;
        // A credit larger than the usage bills nothing, not a refund.
        let billable = total.max(Decimal::ZERO);
        let projected = project(billable, period, now);
        let included = limits.included_vcpu_hours;
        let percent_used = included
            .filter(|i| !i.is_zero())
            .map(|i| (billable / i * Decimal::ONE_HUNDRED).round_dp(PERCENT_DP));
        let over = |hours: Decimal| included.map(|i| (hours - i).max(Decimal::ZERO).normalize());
        let price = limits.overage_per_vcpu_hour;
        let cost = |hours: Option<Decimal>| hours.zip(price).map(|(h, p)| money(h * p));
        let overage = over(billable);
        let projected_overage = over(projected);
        Self {
            org: org.clone(),
            period: period.clone(),
            tier: limits.tier,
            as_of: now,
            measured: measured.normalized(),
            adjustments_vcpu_hours: adjustments_vcpu_hours.normalize(),
            total_vcpu_hours: total.normalize(),
            by_day: by_day
                .into_iter()
                .map(|(day, usage)| DayUsage {
                    day,
                    usage: usage.normalized(),
                })
                .collect(),
            by_database: by_database
                .into_iter()
                .map(|(database, usage)| DatabaseUsage {
                    database: database.to_owned(),
                    usage: usage.normalized(),
                })
                .collect(),
            adjustments,
            included_vcpu_hours: included,
            percent_used,
            projected_vcpu_hours: projected.normalize(),
            overage_per_vcpu_hour: price,
            overage_vcpu_hours: overage,
            overage_cost: cost(overage),
            projected_overage_vcpu_hours: projected_overage,
            projected_overage_cost: cost(projected_overage),
            currency: "usd",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalog::SessionSettings;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn starter() -> TierLimits {
        TierLimits {
            tier: Tier::Starter,
            max_connections: 10,
            qps: Some(50),
            burst: None,
            base_fee: Some(dec("10")),
            included_vcpu_hours: Some(dec("25")),
            overage_per_vcpu_hour: Some(dec("0.15")),
            scale_to_zero: true,
            session: SessionSettings {
                statement_timeout: "60s".into(),
                work_mem: "16MB".into(),
                temp_buffers: "16MB".into(),
            },
        }
    }

    fn record(db: &str, window: i64, vcpu: &str) -> UsageRecord {
        UsageRecord {
            key: format!("r:acme:{db}:{window}:1"),
            org: OrgId::parse("acme").unwrap(),
            database: db.into(),
            period: Period::containing(UnixMillis(window)),
            window_start: UnixMillis(window),
            query_cycles: 10,
            duration_us: 1_500_000,
            vcpu_hours: dec(vcpu),
            gb_hours: dec("0.001"),
        }
    }

    #[test]
    fn totals_days_databases_projection_and_overage() {
        let nov = Period::parse("2026-11").unwrap();
        let day1 = nov.start().0; // 2026-11-01
        let day2 = day1 + 86_400_000;
        let records = [
            record("app", day1, "10"),
            record("app", day2, "5"),
            record("jobs", day2 + 60_000, "6"),
        ];
        let adjustment = UsageAdjustment {
            key: "adj-1".into(),
            org: OrgId::parse("acme").unwrap(),
            period: nov.clone(),
            vcpu_hours: dec("-1"),
            reason: "incident credit".into(),
            by: "admin".into(),
            created_at: UnixMillis(day2),
        };
        // Ten of thirty days gone.
        let now = UnixMillis(day1 + 10 * 86_400_000);
        let report = UsageReport::build(ReportInput {
            org: &OrgId::parse("acme").unwrap(),
            limits: &starter(),
            period: &nov,
            records: &records,
            adjustments: vec![adjustment],
            now,
        });
        assert_eq!(report.measured.query_cycles, 30);
        assert_eq!(report.measured.duration_seconds, dec("4.5"));
        assert_eq!(report.measured.vcpu_hours, dec("21"));
        assert_eq!(report.total_vcpu_hours, dec("20"));
        assert_eq!(report.percent_used, Some(dec("80")));
        assert_eq!(report.by_day.len(), 2);
        assert_eq!(report.by_day[1].day, "2026-11-02");
        assert_eq!(report.by_day[1].usage.vcpu_hours, dec("11"));
        assert_eq!(report.by_database[1].database, "jobs");
        // 20 h in 10 days → 60 h in 30; 35 h over at 0.15 = 5.25.
        assert_eq!(report.projected_vcpu_hours, dec("60"));
        assert_eq!(report.overage_vcpu_hours, Some(dec("0")));
        assert_eq!(report.projected_overage_vcpu_hours, Some(dec("35")));
        assert_eq!(report.projected_overage_cost, Some(dec("5.25")));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["projected_overage_cost"], "5.25", "money is a string");
        assert_eq!(json["by_database"][0]["vcpu_hours"], "15");
    }

    #[test]
    fn free_tier_has_no_overage_price_and_past_periods_project_to_themselves() {
        let mut free = starter();
        free.tier = Tier::Free;
        free.included_vcpu_hours = Some(dec("5"));
        free.overage_per_vcpu_hour = None;
        let oct = Period::parse("2026-10").unwrap();
        let records = [record("app", oct.start().0, "7.5")];
        let report = UsageReport::build(ReportInput {
            org: &OrgId::parse("acme").unwrap(),
            limits: &free,
            period: &oct,
            records: &records,
            adjustments: Vec::new(),
            now: UnixMillis(oct.end().0 + 1),
        });
        assert_eq!(report.projected_vcpu_hours, dec("7.5"));
        assert_eq!(report.percent_used, Some(dec("150")));
        assert_eq!(report.overage_vcpu_hours, Some(dec("2.5")));
        assert_eq!(report.overage_cost, None);
        let mut pro = starter();
        pro.overage_per_vcpu_hour = Some(dec("0.12"));
        pro.included_vcpu_hours = Some(dec("200"));
        let report = UsageReport::build(ReportInput {
            org: &OrgId::parse("acme").unwrap(),
            limits: &pro,
            period: &oct,
            records: &records,
            adjustments: Vec::new(),
            now: UnixMillis(oct.end().0 + 1),
        });
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["overage_cost"], "0.00");
    }
}
