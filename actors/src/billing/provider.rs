//! The invoice-item port: what the billing job asks of the payment provider.
//!
//! The Stripe adapter in the binary implements it; tests may use any
//! implementation. Money crosses this port in integer minor units (cents),
//! already rounded by the billing rules, so the provider never rounds.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::domain::{org_id::OrgId, records::Period};

/// Metadata keys that tie a provider invoice item to one org and period.
pub const ORG_KEY: &str = "dynabase_org";
pub const PERIOD_KEY: &str = "dynabase_period";

/// One pending invoice item to create on a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceItemRequest {
    pub org: OrgId,
    pub period: Period,
    pub customer_id: String,
    /// Attach to this subscription's next invoice, when the org has one.
    pub subscription_id: Option<String>,
    /// In the currency's minor unit (cents); always > 0.
    pub amount_minor: i64,
    /// ISO code, lowercase (`usd`).
    pub currency: String,
    pub description: String,
    /// Includes [`ORG_KEY`] and [`PERIOD_KEY`]; the rest explains the line
    /// (total, included, overage hours, rate).
    pub metadata: BTreeMap<String, String>,
    /// Sent as the provider's idempotency key (one per org and period).
    pub idempotency_key: String,
}

/// An invoice item as the provider knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceItemRef {
    pub id: String,
    /// The invoice that carries it, once there is one.
    pub invoice_id: Option<String>,
}

/// Why a provider call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later: network failure, timeout, 5xx, 429.
    #[error("payment provider unavailable: {0}")]
    Transient(String),
    /// The provider refused the request (4xx other than 429): retrying the
    /// same request will not help (for example a deleted customer).
    #[error("payment provider refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// No provider is configured (no API key).
    #[error("no payment provider is configured")]
    NotConfigured,
}

#[async_trait]
pub trait InvoiceItems: Send + Sync + 'static {
    /// An invoice item on `customer_id` whose metadata names `org` and
    /// `period` (pending or already invoiced), if any. Checked before every
    /// create, because the provider forgets idempotency keys after a day.
    async fn find(
        &self,
        customer_id: &str,
        org: &OrgId,
        period: &Period,
    ) -> Result<Option<InvoiceItemRef>, ProviderError>;

    /// Creates the item with the request's idempotency key.
    async fn create(&self, request: &InvoiceItemRequest) -> Result<InvoiceItemRef, ProviderError>;
}

/// Stands in when no provider is configured: every call says so.
pub struct NoInvoiceItems;

#[async_trait]
impl InvoiceItems for NoInvoiceItems {
    async fn find(
        &self,
        _: &str,
        _: &OrgId,
        _: &Period,
    ) -> Result<Option<InvoiceItemRef>, ProviderError> {
        Err(ProviderError::NotConfigured)
    }

    async fn create(&self, _: &InvoiceItemRequest) -> Result<InvoiceItemRef, ProviderError> {
        Err(ProviderError::NotConfigured)
    }
}
