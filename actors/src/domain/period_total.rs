//! `PeriodTotal`: one organization's measured usage for one period, kept as
//! exact integers so a store can add each batch with `$inc` (or inside its
//! write transaction) and billing, warnings and reports read one document
//! instead of a month of per-minute records.
//!
//! Units:
//! - vCPU: vCPU-nanoseconds. A record's vCPU-hours are
//!   Σ duration_µs × complexity × parallelism / 3.6e9, so its value in
//!   vCPU-ns is Σ duration_µs × factor × 1000: an integer whenever every
//!   factor product has at most three decimal places, which configuration
//!   validation requires. [`record_units`] rounds half-even anyway, so a
//!   hand-made record cannot break the sum.
//! - memory: MB-microseconds, which is how the accumulator sums memory
//!   (Σ work_mem_MB × duration_µs); a record's GB-hours times 1024 × 3.6e9
//!   is that integer exactly.
//!
//! Both fit `i64` (BSON's widest exact integer) for any real month: 2^63
//! vCPU-ns is 2.5 million vCPU-hours, 2^63 MB-µs is 2.5 million GB-hours.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use super::{
    org_id::OrgId,
    records::{Period, UsageRecord},
    usage::MICROS_PER_HOUR,
};

/// vCPU-nanoseconds in a vCPU-hour.
pub const VCPU_NS_PER_HOUR: i64 = 3_600_000_000_000;
/// MB-microseconds in a GB-hour.
pub const MB_US_PER_GB_HOUR: i64 = 1024 * MICROS_PER_HOUR as i64;

/// What one usage record adds to its period's total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageUnits {
    pub query_cycles: i64,
    pub duration_us: i64,
    pub vcpu_ns: i64,
    pub mem_mb_us: i64,
}

impl UsageUnits {
    pub fn add(&mut self, other: &UsageUnits) {
        self.query_cycles = self.query_cycles.saturating_add(other.query_cycles);
        self.duration_us = self.duration_us.saturating_add(other.duration_us);
        self.vcpu_ns = self.vcpu_ns.saturating_add(other.vcpu_ns);
        self.mem_mb_us = self.mem_mb_us.saturating_add(other.mem_mb_us);
    }
}

/// Decimal hours → integer units, rounded half-even (exact for records the
/// accumulator writes; see the module doc).
fn to_units(hours: Decimal, per_hour: i64) -> i64 {
    let units = (hours * Decimal::from(per_hour))
        .round_dp_with_strategy(0, RoundingStrategy::MidpointNearestEven);
    i64::try_from(units).unwrap_or(if units.is_sign_negative() {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// The integer units of one record.
pub fn record_units(record: &UsageRecord) -> UsageUnits {
    UsageUnits {
        query_cycles: i64::try_from(record.query_cycles).unwrap_or(i64::MAX),
        duration_us: i64::try_from(record.duration_us).unwrap_or(i64::MAX),
        vcpu_ns: to_units(record.vcpu_hours, VCPU_NS_PER_HOUR),
        mem_mb_us: to_units(record.gb_hours, MB_US_PER_GB_HOUR),
    }
}

/// An org's running total for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodTotal {
    pub org: OrgId,
    pub period: Period,
    pub units: UsageUnits,
    /// Records added (each once).
    pub records: i64,
}

impl PeriodTotal {
    pub fn zero(org: OrgId, period: Period) -> Self {
        Self {
            org,
            period,
            units: UsageUnits::default(),
            records: 0,
        }
    }

    /// The total of `records` (which must all be of this org and period),
    /// computed the way the stores add them: what reconciliation compares.
    pub fn of_records(org: OrgId, period: Period, records: &[UsageRecord]) -> Self {
        let mut total = Self::zero(org, period);
        for r in records {
            total.add(&record_units(r));
        }
        total
    }

    pub fn add(&mut self, units: &UsageUnits) {
        self.units.add(units);
        self.records = self.records.saturating_add(1);
    }

    /// Measured vCPU-hours, exact.
    pub fn vcpu_hours(&self) -> Decimal {
        Decimal::from(self.units.vcpu_ns) / Decimal::from(VCPU_NS_PER_HOUR)
    }

    /// Measured GB-hours (exact to 28 significant digits).
    pub fn gb_hours(&self) -> Decimal {
        Decimal::from(self.units.mem_mb_us) / Decimal::from(MB_US_PER_GB_HOUR)
    }
}

/// What reconciliation found for one org and period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    pub org: OrgId,
    pub period: Period,
    pub stored: UsageUnits,
    pub recomputed: UsageUnits,
    pub stored_records: i64,
    pub recomputed_records: i64,
}

impl Reconciliation {
    pub fn matches(&self) -> bool {
        self.stored == self.recomputed && self.stored_records == self.recomputed_records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::time::UnixMillis;

    fn record(vcpu: &str, gb: &str) -> UsageRecord {
        UsageRecord {
            key: "k".into(),
            org: OrgId::parse("a").unwrap(),
            database: "db".into(),
            period: Period::parse("2026-11").unwrap(),
            window_start: UnixMillis(0),
            query_cycles: 3,
            duration_us: 1_500,
            vcpu_hours: vcpu.parse().unwrap(),
            gb_hours: gb.parse().unwrap(),
        }
    }

    #[test]
    fn units_of_accumulator_records_are_exact() {
        // 1,500 µs of UPDATE (factor 1.5): 2,250 vCPU-µs.
        let vcpu = Decimal::from(1_500u32) * Decimal::new(15, 1) / Decimal::from(MICROS_PER_HOUR);
        // 4 MB for 1,500 µs.
        let gb = Decimal::from(4 * 1_500u32) / Decimal::from(MB_US_PER_GB_HOUR);
        let units = record_units(&record(&vcpu.to_string(), &gb.to_string()));
        assert_eq!(units.vcpu_ns, 2_250_000);
        assert_eq!(units.mem_mb_us, 6_000);
        assert_eq!((units.query_cycles, units.duration_us), (3, 1_500));
    }

    #[test]
    fn totals_read_back_as_hours() {
        let mut t = PeriodTotal::zero(
            OrgId::parse("a").unwrap(),
            Period::parse("2026-11").unwrap(),
        );
        t.add(&record_units(&record("1.25", "0.5")));
        t.add(&record_units(&record("0.75", "0.5")));
        assert_eq!(t.vcpu_hours(), Decimal::from(2));
        assert_eq!(t.gb_hours(), Decimal::ONE);
        assert_eq!(t.records, 2);
    }
}
