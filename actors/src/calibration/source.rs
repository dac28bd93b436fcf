//! The port to the infrastructure provider's bill: what Railway measured
//! for a period. The Railway adapter in the binary implements it.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rust_decimal::Decimal;

use crate::domain::records::Period;

/// What the provider measured over a period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Measured {
    /// vCPU-minutes, all services.
    pub vcpu_minutes: Decimal,
    /// GB-minutes of memory, all services.
    pub gb_minutes: Decimal,
    /// Per service id: (vCPU-minutes, GB-minutes).
    pub by_service: BTreeMap<String, (Decimal, Decimal)>,
}

/// Why the provider's figures could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("no Railway API token is configured (RAILWAY_API_TOKEN)")]
    NotConfigured,
    #[error("Railway refused the token (HTTP {0})")]
    Unauthorized(u16),
    #[error("Railway is rate limiting us (HTTP 429)")]
    RateLimited,
    #[error("Railway answered HTTP {0}")]
    Http(u16),
    #[error("Railway could not be reached: {0}")]
    Unreachable(String),
    #[error("Railway's GraphQL errors: {0}")]
    GraphQl(String),
    #[error("Railway's answer could not be read: {0}")]
    Malformed(String),
}

#[async_trait]
pub trait UsageSource: Send + Sync + 'static {
    async fn measured(&self, period: &Period) -> Result<Measured, SourceError>;
}

/// Stands in when no token is configured.
pub struct NoUsageSource;

#[async_trait]
impl UsageSource for NoUsageSource {
    async fn measured(&self, _: &Period) -> Result<Measured, SourceError> {
        Err(SourceError::NotConfigured)
    }
}
