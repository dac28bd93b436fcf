//! UTC calendar arithmetic for usage: which billing period and day an
//! instant falls in, and where a period starts and ends.
//!
//! Small enough to write out (Howard Hinnant's `days_from_civil` /
//! `civil_from_days`) rather than add a date-time crate for three functions.

use super::{records::Period, time::UnixMillis};

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn civil_of(t: UnixMillis) -> (i64, i64, i64) {
    civil_from_days(t.0.div_euclid(DAY_MS))
}

/// The UTC day of `t`, `YYYY-MM-DD`.
pub fn day_of(t: UnixMillis) -> String {
    let (y, m, d) = civil_of(t);
    format!("{y:04}-{m:02}-{d:02}")
}

impl Period {
    /// The period (UTC month) `t` falls in.
    pub fn containing(t: UnixMillis) -> Period {
        let (y, m, _) = civil_of(t);
        // Years outside 0..=9999 cannot be written as YYYY; clamp rather
        // than fail, as no real clock is there.
        let y = y.clamp(0, 9999);
        Period::parse(&format!("{y:04}-{m:02}"))
            .unwrap_or_else(|_| unreachable!("formatted as a valid period"))
    }

    fn year_month(&self) -> (i64, i64) {
        // `Period::parse` guarantees four digits, a dash and two digits.
        let s = self.as_str();
        let year = s[..4].parse().unwrap_or(1970);
        let month = s[5..].parse().unwrap_or(1);
        (year, month)
    }

    /// First instant of the period.
    pub fn start(&self) -> UnixMillis {
        let (y, m) = self.year_month();
        UnixMillis(days_from_civil(y, m, 1) * DAY_MS)
    }

    /// First instant after the period.
    pub fn end(&self) -> UnixMillis {
        let (y, m) = self.year_month();
        let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        UnixMillis(days_from_civil(y, m, 1) * DAY_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_and_days_are_utc() {
        // 2026-11-30T23:59:59.999Z and the next millisecond.
        let last = UnixMillis(1_796_083_199_999);
        assert_eq!(Period::containing(last).as_str(), "2026-11");
        assert_eq!(day_of(last), "2026-11-30");
        let next = UnixMillis(last.0 + 1);
        assert_eq!(Period::containing(next).as_str(), "2026-12");
        assert_eq!(day_of(next), "2026-12-01");
        let nov = Period::parse("2026-11").unwrap();
        assert_eq!(nov.start(), UnixMillis(1_793_491_200_000));
        assert_eq!(nov.end(), next);
        let dec = Period::parse("2026-12").unwrap();
        assert_eq!(dec.end(), UnixMillis(1_798_761_600_000));
        assert_eq!(day_of(UnixMillis(0)), "1970-01-01");
        // Leap day.
        assert_eq!(day_of(UnixMillis(1_709_164_800_000)), "2024-02-29");
    }
}
