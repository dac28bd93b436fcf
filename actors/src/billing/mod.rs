//! Billing: a closed period's usage becomes an overage charge on the
//! organization's payment-provider customer, exactly once.
//!
//! - `charge`: the rules (pure, exact decimal);
//! - `plan`: every org's charge for a period from four bulk reads;
//! - `push`: one record to the provider, with a lease, a look-up before
//!   every create, and an idempotency key;
//! - `runner`: the supervised actor that runs both on a schedule and on
//!   demand;
//! - `confirm`: invoice events confirm pushed records;
//! - `usage_policy`: what happens while a period is still open (FREE's
//!   forced upgrade, spend caps);
//! - `provider`: the port the payment-provider adapter implements.

use std::time::Duration;

use crate::domain::{jobs::Backoff, records::Period, time::UnixMillis};

pub mod charge;
pub mod confirm;
pub mod plan;
pub mod provider;
pub mod push;
pub mod runner;
pub mod usage_policy;

/// Whether the job sends anything to the payment provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingMode {
    /// Records are pushed to the provider.
    #[default]
    Live,
    /// Everything is computed and recorded (marked `shadow`); nothing is
    /// sent (the spec's parallel run before the cut-over).
    Shadow,
}

impl BillingMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "live" => Some(Self::Live),
            "shadow" => Some(Self::Shadow),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Shadow => "shadow",
        }
    }
}

/// The store setting that switches the mode on every replica at run time.
pub const MODE_SETTING: &str = "billing.mode";

/// The mode in force: the store setting when an operator set one, else
/// the configured default.
pub async fn current_mode(
    store: &dyn crate::store::Store,
    config: &BillingConfig,
) -> Result<BillingMode, crate::store::StoreError> {
    Ok(store
        .setting(MODE_SETTING)
        .await?
        .as_deref()
        .and_then(BillingMode::parse)
        .unwrap_or(config.mode))
}

/// Billing configuration (`[billing]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingConfig {
    /// ISO code, lowercase.
    pub currency: String,
    /// A period is billed this long after it ends, so every replica's last
    /// usage flush is in.
    pub settle_delay: Duration,
    /// How long a replica pushing a record holds it.
    pub lease: Duration,
    /// Waits between push attempts after transient provider errors.
    pub retry: Backoff,
    /// FREE's soft period before the forced upgrade (DESIGN.md Q2: 7 days).
    pub free_soft_period: Duration,
    /// Where the upgrade prompt sends people.
    pub upgrade_url: String,
    /// The default mode (an operator's switch in the store wins).
    pub mode: BillingMode,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            currency: "usd".to_owned(),
            settle_delay: Duration::from_secs(3600),
            lease: Duration::from_secs(120),
            retry: Backoff {
                base: Duration::from_secs(60),
                max: Duration::from_secs(3600),
            },
            free_soft_period: Duration::from_secs(7 * 86_400),
            upgrade_url: "https://dynabase.example/upgrade".to_owned(),
            mode: BillingMode::Live,
        }
    }
}

impl BillingConfig {
    /// Whether `period` may be billed at `now`.
    pub fn is_closed(&self, period: &Period, now: UnixMillis) -> bool {
        period.end().plus(self.settle_delay) <= now
    }

    /// The latest period that may be billed at `now`.
    pub fn last_closed(&self, now: UnixMillis) -> Period {
        let settled = now.minus(self.settle_delay);
        Period::containing(
            Period::containing(settled)
                .start()
                .minus(Duration::from_millis(1)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_closes_after_the_settle_delay() {
        let config = BillingConfig::default();
        let nov = Period::parse("2026-11").unwrap();
        assert!(!config.is_closed(&nov, nov.end()));
        assert!(config.is_closed(&nov, nov.end().plus(config.settle_delay)));
        assert_eq!(
            config.last_closed(nov.end().plus(Duration::from_secs(60))),
            Period::parse("2026-10").unwrap()
        );
        assert_eq!(config.last_closed(nov.end().plus(config.settle_delay)), nov);
    }
}
