//! Records the platform keeps besides organizations: usage, processed webhook
//! events, calibrations, notifications and the tier-change audit log.
//!
//! Each record that must not be applied twice carries a `key` that the store
//! keeps unique; writing the same key again is reported, not applied.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{org_id::OrgId, tier::Tier, time::UnixMillis};

/// A billing period, `YYYY-MM`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Period(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("period must be YYYY-MM, got `{0}`")]
pub struct PeriodError(pub String);

impl Period {
    pub fn parse(s: &str) -> Result<Self, PeriodError> {
        let bad = || PeriodError(s.to_owned());
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        let month: u8 = m.parse().map_err(|_| bad())?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Period {
    type Error = PeriodError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Period> for String {
    fn from(p: Period) -> Self {
        p.0
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a keyed write was applied or had been applied before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Applied,
    AlreadyApplied,
}

/// Usage of one org's database over one window, written once per `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Idempotency key: replica, org, window and sequence.
    pub key: String,
    pub org: OrgId,
    pub database: String,
    pub period: Period,
    pub window_start: UnixMillis,
    pub query_cycles: u64,
    pub duration_us: u64,
    pub vcpu_hours: Decimal,
    pub gb_hours: Decimal,
}

/// An operator's credit (negative) or debit (positive) of vCPU-hours for one
/// org and period; added to measured usage wherever usage is read. The record
/// is its own audit entry: who, when and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageAdjustment {
    /// Idempotency key: a retried request is recorded once.
    pub key: String,
    pub org: OrgId,
    pub period: Period,
    pub vcpu_hours: Decimal,
    pub reason: String,
    /// Who made it (`admin`).
    pub by: String,
    pub created_at: UnixMillis,
}

/// A Stripe (or other) webhook event that has been accepted once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessedEvent {
    pub event_id: String,
    pub event_type: String,
    pub received_at: UnixMillis,
}

/// One month's comparison of estimated usage with the real infrastructure
/// bill (`calibration::compute`).
pub type CalibrationRecord = crate::calibration::compute::Calibration;

/// Something an organization is told about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Dedupe key: the same notification is recorded once.
    pub key: String,
    pub org: OrgId,
    pub kind: String,
    pub message: String,
    pub created_at: UnixMillis,
}

/// One entry in the audit log of tier changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierChange {
    pub org: OrgId,
    pub from: Tier,
    pub to: Tier,
    /// Who or what made the change: `admin`, `stripe:<event id>`, `lifecycle`.
    pub source: String,
    pub reason: String,
    pub at: UnixMillis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_year_and_month() {
        assert!(Period::parse("2026-11").is_ok());
        assert!(Period::parse("2026-13").is_err());
        assert!(Period::parse("26-11").is_err());
        assert!(Period::parse("2026-1").is_err());
    }
}
