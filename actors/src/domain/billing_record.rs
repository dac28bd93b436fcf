//! `BillingRecord`: one organization's charge for one closed period and how
//! far it got towards the payment provider.
//!
//! States: `computed` → `pushed` (the provider holds the invoice item) →
//! `confirmed` (the invoice carrying it was finalized or paid); or
//! `skipped` (nothing to charge, and why), or `failed` (the provider refused
//! the item; an operator must look). A `computed` record waits for its next
//! attempt (backoff) and for the lease that lets one replica push it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{org_id::OrgId, records::Period, time::UnixMillis};
use crate::billing::charge::{Charge, SkipReason};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingState {
    Computed,
    Pushed,
    Confirmed,
    Skipped,
    Failed,
}

impl BillingState {
    pub const ALL: [BillingState; 5] = [
        BillingState::Computed,
        BillingState::Pushed,
        BillingState::Confirmed,
        BillingState::Skipped,
        BillingState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BillingState::Computed => "computed",
            BillingState::Pushed => "pushed",
            BillingState::Confirmed => "confirmed",
            BillingState::Skipped => "skipped",
            BillingState::Failed => "failed",
        }
    }
}

impl fmt::Display for BillingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The record's key: one per org and period.
pub fn billing_key(org: &OrgId, period: &Period) -> String {
    format!("{org}:{period}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingRecord {
    /// `<org>:<period>`, unique in the store; also the provider
    /// idempotency key's suffix.
    pub key: String,
    pub org: OrgId,
    pub period: Period,
    pub state: BillingState,
    /// Why it was skipped.
    pub skip: Option<SkipReason>,
    /// What the charge was computed from and comes to.
    pub charge: Charge,
    /// Computed without creating anything at the provider (billing mode
    /// `shadow`).
    #[serde(default)]
    pub shadow: bool,
    pub customer_id: Option<String>,
    pub subscription_id: Option<String>,
    pub provider_item_id: Option<String>,
    pub provider_invoice_id: Option<String>,
    /// Push attempts so far.
    pub attempts: u32,
    /// A `computed` record is not pushed before this instant.
    pub next_attempt_at: UnixMillis,
    /// The last provider error (transient or final).
    pub last_error: Option<String>,
    pub created_at: UnixMillis,
    /// Changes on every write; the compare-and-set token.
    pub updated_at: UnixMillis,
}

impl BillingRecord {
    /// The provider idempotency key for this org and period.
    pub fn idempotency_key(&self) -> String {
        format!("dynabase-overage-{}", self.key)
    }
}
