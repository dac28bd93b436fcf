//! Per-organization money controls kept on the organization record: the
//! optional monthly spend cap and the FREE tier's overage state (DESIGN.md
//! Q2: soft overage for a while, then forced upgrade).

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{records::Period, time::UnixMillis};

/// What happens once a period's overage cost reaches the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapAction {
    /// New query cycles are refused (53400) until the cap is raised or the
    /// period ends.
    Refuse,
    /// The org's query rate drops to FREE's until then.
    Throttle,
}

impl fmt::Display for CapAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CapAction::Refuse => "refuse",
            CapAction::Throttle => "throttle",
        })
    }
}

/// A monthly ceiling on overage cost (base fees are not counted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendCap {
    /// In the billing currency, > 0.
    pub amount: Decimal,
    pub action: CapAction,
    /// Who set it last: `admin` or `customer`.
    pub set_by: String,
}

/// The period in which a cap was reached; enforcement ends with the period
/// or when the cap is raised (which clears this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapReached {
    pub period: Period,
    pub at: UnixMillis,
}

/// A FREE org that used more than its included vCPU-hours this period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeOverage {
    pub period: Period,
    /// When the included hours were found exceeded.
    pub since: UnixMillis,
    /// From then on new connections are refused (since + soft period).
    pub enforce_from: UnixMillis,
}

impl FreeOverage {
    /// Whether new connections are refused at `now`: in the soft period's
    /// aftermath and still in the period it was found in.
    pub fn enforced_at(&self, now: UnixMillis) -> bool {
        now >= self.enforce_from && Period::containing(now) == self.period
    }
}

/// Where an org stands on the FREE overage policy, for reports and the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FreeOverageStatus {
    WithinIncluded,
    SoftPeriod {
        since: UnixMillis,
        enforce_from: UnixMillis,
    },
    ForcedUpgrade {
        since: UnixMillis,
        enforced_from: UnixMillis,
    },
}

impl FreeOverageStatus {
    pub fn of(state: Option<&FreeOverage>, now: UnixMillis) -> Self {
        match state {
            Some(s) if Period::containing(now) == s.period => {
                if s.enforced_at(now) {
                    FreeOverageStatus::ForcedUpgrade {
                        since: s.since,
                        enforced_from: s.enforce_from,
                    }
                } else {
                    FreeOverageStatus::SoftPeriod {
                        since: s.since,
                        enforce_from: s.enforce_from,
                    }
                }
            }
            _ => FreeOverageStatus::WithinIncluded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_upgrade_starts_after_the_soft_period_and_ends_with_the_period() {
        let period = Period::parse("2026-11").unwrap();
        let since = period.start().plus(std::time::Duration::from_secs(86_400));
        let state = FreeOverage {
            period: period.clone(),
            since,
            enforce_from: since.plus(std::time::Duration::from_secs(7 * 86_400)),
        };
        let day = |d: u64| since.plus(std::time::Duration::from_secs(d * 86_400));
        assert!(!state.enforced_at(day(6)));
        assert!(state.enforced_at(day(7)));
        assert!(
            !state.enforced_at(period.end()),
            "a new period starts clean"
        );
        assert!(matches!(
            FreeOverageStatus::of(Some(&state), day(3)),
            FreeOverageStatus::SoftPeriod { .. }
        ));
        assert_eq!(
            FreeOverageStatus::of(Some(&state), period.end()),
            FreeOverageStatus::WithinIncluded
        );
    }
}
