//! `Organization`: a tenant, its tier and where its PostgreSQL lives.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    compute::Compute,
    org_id::OrgId,
    spend::{CapReached, FreeOverage, SpendCap},
    tier::Tier,
    time::UnixMillis,
};

/// Why an upstream address is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("must be host:port")]
    MissingPort,
    #[error("port must be a number from 1 to 65535")]
    BadPort,
    #[error("host must not be empty")]
    EmptyHost,
}

/// The tenant's PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl Upstream {
    pub fn parse(s: &str) -> Result<Self, UpstreamError> {
        let (host, port) = s.rsplit_once(':').ok_or(UpstreamError::MissingPort)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(UpstreamError::EmptyHost);
        }
        let port: u16 = port.parse().map_err(|_| UpstreamError::BadPort)?;
        if port == 0 {
            return Err(UpstreamError::BadPort);
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl TryFrom<String> for Upstream {
    type Error = UpstreamError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Upstream> for String {
    fn from(u: Upstream) -> Self {
        u.to_string()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A tier change that takes effect later (downgrades wait for a grace period).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTierChange {
    pub to: Tier,
    pub effective_at: UnixMillis,
    pub reason: String,
}

/// What is kept per organization besides its identity and tier: billing
/// and notification state, money controls, and its Railway service. Older
/// records have none, hence `Default`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleState {
    /// Set by a failed payment, cleared by a paid invoice; after the
    /// configured grace the organization moves to FREE.
    #[serde(default)]
    pub past_due_since: Option<UnixMillis>,
    /// Where notifications about this organization are POSTed (optional).
    #[serde(default)]
    pub notification_url: Option<String>,
    /// Optional monthly ceiling on overage cost.
    #[serde(default)]
    pub spend_cap: Option<SpendCap>,
    /// Set in the period the cap was reached; enforced until it ends.
    #[serde(default)]
    pub cap_reached: Option<CapReached>,
    /// A FREE org past its included hours this period (Q2 policy).
    #[serde(default)]
    pub free_overage: Option<FreeOverage>,
    /// The Railway service that runs this org's database, so calibration
    /// can compare its estimate with what Railway measured.
    #[serde(default)]
    pub railway_service_id: Option<String>,
    /// This org's enforcement mode, over the platform's (`limits.enforcement`).
    #[serde(default)]
    pub enforcement: Option<crate::tenant::enforcement::Enforcement>,
}

/// A tenant as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    pub id: OrgId,
    pub name: String,
    pub tier: Tier,
    pub upstream: Upstream,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub pending_tier_change: Option<PendingTierChange>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// Past-due state and notification target; absent in older records.
    #[serde(default)]
    pub lifecycle: LifecycleState,
    /// Driver and scale-to-zero state; absent in older records (always on).
    #[serde(default)]
    pub compute: Compute,
}

#[cfg(test)]
impl Organization {
    /// A fresh organization on `tier` whose upstream is the local
    /// PostgreSQL, for tests in this crate.
    pub(crate) fn for_test(id: &str, tier: Tier) -> Self {
        Self {
            id: OrgId::parse(id).expect("org id"),
            name: id.into(),
            tier,
            upstream: Upstream::parse("127.0.0.1:5432").expect("upstream"),
            stripe_customer_id: None,
            stripe_subscription_id: None,
            pending_tier_change: None,
            created_at: UnixMillis(0),
            updated_at: UnixMillis(0),
            lifecycle: LifecycleState::default(),
            compute: Compute::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_round_trips() {
        let u = Upstream::parse("127.0.0.1:5432").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 5432));
        assert_eq!(u.to_string(), "127.0.0.1:5432");
        assert_eq!(
            Upstream::parse("[::1]:5432").unwrap().to_string(),
            "[::1]:5432"
        );
        assert_eq!(Upstream::parse("db"), Err(UpstreamError::MissingPort));
        assert_eq!(Upstream::parse("db:0"), Err(UpstreamError::BadPort));
        assert_eq!(Upstream::parse(":5432"), Err(UpstreamError::EmptyHost));
    }
}
