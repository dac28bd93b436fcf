//! Usage formulas (DESIGN.md "Usage formulas") in exact decimal:
//!
//! - vCPU-hours = duration_ms / 3,600,000 × complexity × parallelism
//! - GB-hours   = work_mem_MB / 1024 × duration_ms / 3,600,000
//!
//! Both are linear in the duration, so the sum over many cycles equals the
//! formula applied to the summed durations. [`UsageTotals`] therefore keeps
//! exact integer sums (microseconds per statement kind, MB·µs) and applies
//! the decimal formula once per record: the result is what summing the
//! per-event decimals would give, without per-event rounding and at a
//! fraction of the cost on the accumulator's hot path.

use std::time::Duration;

use rust_decimal::Decimal;

use super::{
    catalog::{UsageFactor, UsageFactors},
    cycle::StatementKind,
};

/// Microseconds in an hour: durations are kept in µs.
pub const MICROS_PER_HOUR: u64 = 3_600_000_000;
const MB_PER_GB: u64 = 1024;

/// Why a usage figure could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("usage figure overflows the decimal range")]
    Overflow,
}

/// A duration in whole microseconds (saturating; no real cycle gets near).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// vCPU-hours of one cycle (the per-event formula, for reference and tests).
pub fn vcpu_hours(duration: Duration, factor: UsageFactor) -> Decimal {
    Decimal::from(micros(duration)) / Decimal::from(MICROS_PER_HOUR) * factor.vcpu_per_hour()
}

/// GB-hours of one cycle of a session with `work_mem_mb`.
pub fn gb_hours(work_mem_mb: u32, duration: Duration) -> Decimal {
    Decimal::from(work_mem_mb) / Decimal::from(MB_PER_GB) * Decimal::from(micros(duration))
        / Decimal::from(MICROS_PER_HOUR)
}

/// Exact sums over any number of cycles of one org, database and window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub query_cycles: u64,
    /// Summed durations, per [`StatementKind::index`].
    pub duration_us_by_kind: [u64; 6],
    /// Σ work_mem_MB × duration_µs.
    pub mem_mb_us: u128,
}

impl UsageTotals {
    /// Adds `cycles` cycles of `kind` lasting `duration_us` in total.
    #[inline]
    pub fn add(&mut self, kind: StatementKind, cycles: u64, duration_us: u64, work_mem_mb: u32) {
        self.query_cycles = self.query_cycles.saturating_add(cycles);
        let slot = &mut self.duration_us_by_kind[kind.index()];
        *slot = slot.saturating_add(duration_us);
        self.mem_mb_us = self
            .mem_mb_us
            .saturating_add(u128::from(work_mem_mb) * u128::from(duration_us));
    }

    pub fn merge(&mut self, other: &UsageTotals) {
        self.query_cycles = self.query_cycles.saturating_add(other.query_cycles);
        for (mine, theirs) in self
            .duration_us_by_kind
            .iter_mut()
            .zip(other.duration_us_by_kind)
        {
            *mine = mine.saturating_add(theirs);
        }
        self.mem_mb_us = self.mem_mb_us.saturating_add(other.mem_mb_us);
    }

    pub fn duration_us(&self) -> u64 {
        self.duration_us_by_kind
            .iter()
            .fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// Σ over kinds of duration_h × complexity × parallelism.
    pub fn vcpu_hours(&self, factors: &UsageFactors) -> Result<Decimal, UsageError> {
        let mut weighted = Decimal::ZERO;
        for kind in StatementKind::ALL {
            let us = self.duration_us_by_kind[kind.index()];
            if us == 0 {
                continue;
            }
            let term = Decimal::from(us)
                .checked_mul(factors.for_kind(kind).vcpu_per_hour())
                .ok_or(UsageError::Overflow)?;
            weighted = weighted.checked_add(term).ok_or(UsageError::Overflow)?;
        }
        weighted
            .checked_div(Decimal::from(MICROS_PER_HOUR))
            .ok_or(UsageError::Overflow)
    }

    /// work_mem_GB × duration_h, summed.
    pub fn gb_hours(&self) -> Result<Decimal, UsageError> {
        let mb_us = i128::try_from(self.mem_mb_us).map_err(|_| UsageError::Overflow)?;
        let mb_us =
            Decimal::try_from_i128_with_scale(mb_us, 0).map_err(|_| UsageError::Overflow)?;
        mb_us
            .checked_div(Decimal::from(MB_PER_GB * MICROS_PER_HOUR))
            .ok_or(UsageError::Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn factors() -> UsageFactors {
        let f = |c: &str, p: &str| UsageFactor {
            complexity: dec(c),
            parallelism: dec(p),
        };
        UsageFactors {
            select: f("1.0", "1.0"),
            insert: f("1.2", "1.0"),
            update: f("1.5", "1.0"),
            delete: f("1.3", "1.0"),
            ddl: f("2.0", "1.0"),
            other: f("1.0", "2.0"),
        }
    }

    #[test]
    fn one_hour_of_select_is_one_vcpu_hour_and_factors_multiply() {
        let hour = Duration::from_secs(3600);
        assert_eq!(vcpu_hours(hour, factors().select), dec("1"));
        assert_eq!(vcpu_hours(hour, factors().update), dec("1.5"));
        assert_eq!(vcpu_hours(hour, factors().other), dec("2"));
        // 1024 MB for an hour is one GB-hour.
        assert_eq!(gb_hours(1024, hour), dec("1"));
        assert_eq!(
            gb_hours(4, Duration::from_millis(200)),
            dec("4") / dec("1024") * dec("200") / dec("3600000")
        );
    }

    #[test]
    fn summed_totals_equal_the_sum_of_per_event_figures() {
        let f = factors();
        let events = [
            (StatementKind::Select, 200_123u64, 4u32),
            (StatementKind::Insert, 1_000, 16),
            (StatementKind::Select, 7, 4),
            (StatementKind::Ddl, 3_600_000_000, 64),
        ];
        let mut totals = UsageTotals::default();
        let mut vcpu = Decimal::ZERO;
        let mut gb = Decimal::ZERO;
        for (kind, us, mem) in events {
            totals.add(kind, 1, us, mem);
            vcpu += vcpu_hours(Duration::from_micros(us), f.for_kind(kind));
            gb += gb_hours(mem, Duration::from_micros(us));
        }
        assert_eq!(totals.query_cycles, 4);
        assert_eq!(totals.duration_us(), 200_123 + 1_000 + 7 + 3_600_000_000);
        // Equal up to the rounding of the per-event route (28 digits).
        let tolerance = dec("0.000000000000000001");
        assert!((totals.vcpu_hours(&f).unwrap() - vcpu).abs() < tolerance);
        assert!((totals.gb_hours().unwrap() - gb).abs() < tolerance);
        assert_eq!(
            totals.vcpu_hours(&f).unwrap().round_dp(12),
            dec("2.000055925")
        );
    }
}
