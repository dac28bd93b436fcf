//! The tier catalog: what each tier allows and costs, and the usage factors.
//!
//! Values come from configuration (`config/tiers.toml`, `config/default.toml`);
//! nothing here has a built-in number. The binary validates the raw
//! configuration and builds these types once at start-up.

use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{cycle::StatementKind, tier::Tier};

/// PostgreSQL settings applied to every session of a tier, as PostgreSQL spells
/// them (`"30s"`, `"4MB"`), so they can be sent in a StartupMessage unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSettings {
    pub statement_timeout: String,
    pub work_mem: String,
    pub temp_buffers: String,
}

/// Everything a tier allows and costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierLimits {
    pub tier: Tier,
    /// Concurrent connections per organization.
    pub max_connections: u32,
    /// Query cycles per second per organization; `None` is unlimited.
    pub qps: Option<u32>,
    /// Cycles that may be spent at once; defaults to one second's worth.
    pub burst: Option<u32>,
    /// Monthly base fee; `None` means "by contract".
    pub base_fee: Option<Decimal>,
    /// vCPU-hours included in the base fee; `None` means "by contract".
    pub included_vcpu_hours: Option<Decimal>,
    /// Price per vCPU-hour above the included amount; `None` means no overage
    /// is billed (FREE follows the forced-upgrade policy instead).
    pub overage_per_vcpu_hour: Option<Decimal>,
    pub scale_to_zero: bool,
    pub session: SessionSettings,
}

/// The four tiers, one entry each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierCatalog {
    tiers: Vec<TierLimits>,
}

impl TierCatalog {
    /// Builds a catalog; the caller (configuration validation) guarantees one
    /// entry per tier. Missing tiers are reported as `Err(tier)`.
    pub fn new(mut tiers: Vec<TierLimits>) -> Result<Self, Tier> {
        tiers.sort_by_key(|t| t.tier);
        for expected in Tier::ALL {
            if !tiers.iter().any(|t| t.tier == expected) {
                return Err(expected);
            }
        }
        tiers.dedup_by_key(|t| t.tier);
        Ok(Self { tiers })
    }

    pub fn get(&self, tier: Tier) -> &TierLimits {
        // `new` guarantees every tier is present and sorted in `Tier` order.
        &self.tiers[tier as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = &TierLimits> {
        self.tiers.iter()
    }
}

/// Multipliers applied to a query's duration to estimate vCPU use; exact
/// decimals so that usage (and the money computed from it) never goes
/// through floating point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageFactor {
    pub complexity: Decimal,
    pub parallelism: Decimal,
}

impl UsageFactor {
    /// complexity × parallelism: what one hour of duration costs in vCPU-hours.
    pub fn vcpu_per_hour(&self) -> Decimal {
        self.complexity * self.parallelism
    }
}

/// Usage factors per statement kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageFactors {
    pub select: UsageFactor,
    pub insert: UsageFactor,
    pub update: UsageFactor,
    pub delete: UsageFactor,
    pub ddl: UsageFactor,
    pub other: UsageFactor,
}

impl UsageFactors {
    pub fn for_kind(&self, kind: StatementKind) -> UsageFactor {
        match kind {
            StatementKind::Select => self.select,
            StatementKind::Insert => self.insert,
            StatementKind::Update => self.update,
            StatementKind::Delete => self.delete,
            StatementKind::Ddl => self.ddl,
            StatementKind::Other => self.other,
        }
    }
}

/// Lifecycle timings that are configuration, not code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecyclePolicy {
    pub downgrade_grace: Duration,
    pub payment_failure_grace: Duration,
}
