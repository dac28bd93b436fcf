//! Schemas, for the OpenAPI document, of what the API reads and returns but
//! does not define itself:
//!
//! - request bodies, which the handlers read field by field (so one answer
//!   names every bad field) rather than through these types;
//! - the domain records of the actors crate (which does not depend on
//!   `utoipa`), written as the JSON they serialize to. Records with many
//!   nested parts are open objects: their top-level fields are listed only
//!   where the document can state them exactly.
//!
//! None of these types is ever built; `tests/openapi.rs` and the schemathesis
//! step of `scripts/test.sh` check the answers against them.
#![allow(dead_code)]

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// A subscription tier.
#[derive(Serialize, ToSchema)]
#[schema(as = Tier)]
#[serde(rename_all = "lowercase")]
pub enum TierDoc {
    Free,
    Starter,
    Pro,
    Enterprise,
}

/// Limits enforcement: `shadow` counts what would be refused instead.
#[derive(Serialize, ToSchema)]
#[schema(as = Enforcement)]
#[serde(rename_all = "snake_case")]
pub enum EnforcementDoc {
    Enforce,
    Shadow,
}

/// Billing mode: `shadow` records charges and sends nothing to Stripe.
#[derive(Serialize, ToSchema)]
#[schema(as = BillingMode)]
#[serde(rename_all = "snake_case")]
pub enum BillingModeDoc {
    Live,
    Shadow,
}

/// Where the database is in the scale-to-zero state machine.
#[derive(Serialize, ToSchema)]
#[schema(as = ComputePhase)]
#[serde(rename_all = "snake_case")]
pub enum PhaseDoc {
    Active,
    Suspending,
    Suspended,
    Waking,
}

/// What happens once a period's overage cost reaches the cap.
#[derive(Serialize, ToSchema)]
#[schema(as = CapAction)]
#[serde(rename_all = "snake_case")]
pub enum CapActionDoc {
    Refuse,
    Throttle,
}

/// A monthly ceiling on overage cost.
#[derive(Serialize, ToSchema)]
#[schema(as = SpendCap)]
pub struct SpendCapDoc {
    /// Decimal string in the billing currency, > 0.
    amount: String,
    action: CapActionDoc,
    /// `admin` or `customer`.
    set_by: String,
}

/// The period in which the spend cap was reached.
#[derive(Serialize, ToSchema)]
#[schema(as = CapReached)]
pub struct CapReachedDoc {
    /// `YYYY-MM`.
    period: String,
    /// Unix milliseconds.
    at: i64,
}

/// A tier change that takes effect later.
#[derive(Serialize, ToSchema)]
#[schema(as = PendingTierChange)]
pub struct PendingTierChangeDoc {
    to: TierDoc,
    effective_at: i64,
    reason: String,
}

/// Billing and notification state of an organization.
#[derive(Serialize, ToSchema)]
#[schema(as = LifecycleState)]
pub struct LifecycleStateDoc {
    past_due_since: Option<i64>,
    notification_url: Option<String>,
    spend_cap: Option<SpendCapDoc>,
    cap_reached: Option<CapReachedDoc>,
    /// A FREE org past its included hours: `period`, `since`, `enforce_from`.
    #[schema(value_type = Option<Object>)]
    free_overage: Option<Value>,
    railway_service_id: Option<String>,
    enforcement: Option<EnforcementDoc>,
}

/// How the organization's database is stopped and started
/// (docs/scale-to-zero.md).
#[derive(Serialize, ToSchema)]
#[schema(as = ComputeSpec)]
#[serde(tag = "driver", rename_all = "snake_case")]
pub enum ComputeSpecDoc {
    /// Never stopped.
    AlwaysOn,
    /// A PostgreSQL data directory on this host, run with `pg_ctl`.
    Local {
        /// Absolute path.
        data_dir: String,
        #[schema(minimum = 1, maximum = 65535)]
        port: u16,
        /// Absolute directory of `pg_ctl`; absent: found on `PATH`.
        pg_bin: Option<String>,
    },
    /// Operator-given shell commands.
    Command {
        suspend: String,
        wake: String,
        status: Option<String>,
        #[schema(minimum = 1, maximum = 3600000)]
        timeout_ms: u64,
    },
}

/// An organization.
#[derive(Serialize, ToSchema)]
#[schema(as = Organization)]
pub struct OrganizationDoc {
    id: String,
    name: String,
    tier: TierDoc,
    /// `host:port` of the organization's PostgreSQL.
    upstream: String,
    stripe_customer_id: Option<String>,
    stripe_subscription_id: Option<String>,
    pending_tier_change: Option<PendingTierChangeDoc>,
    /// Unix milliseconds.
    created_at: i64,
    updated_at: i64,
    lifecycle: LifecycleStateDoc,
    /// `spec` (the driver) and `state` (phase, since, cold starts, …).
    #[schema(value_type = Object)]
    compute: Value,
}

/// An operator's credit (negative) or debit (positive) of vCPU-hours.
#[derive(Serialize, ToSchema)]
#[schema(as = UsageAdjustment)]
pub struct UsageAdjustmentDoc {
    /// Idempotency key.
    key: String,
    org: String,
    period: String,
    /// Decimal string.
    vcpu_hours: String,
    reason: String,
    by: String,
    created_at: i64,
}

/// One entry of the tier audit log.
#[derive(Serialize, ToSchema)]
#[schema(as = TierChange)]
pub struct TierChangeDoc {
    org: String,
    from: TierDoc,
    to: TierDoc,
    /// `admin`, `stripe:<event id>` or `lifecycle`.
    source: String,
    reason: String,
    at: i64,
}

/// Something an organization was told.
#[derive(Serialize, ToSchema)]
#[schema(as = Notification)]
pub struct NotificationDoc {
    key: String,
    org: String,
    kind: String,
    message: String,
    created_at: i64,
}

/// The usage report of one organization and period (docs/usage.md). Decimal
/// figures are strings; `null` where a figure does not apply (by contract,
/// or no overage billed).
#[derive(Serialize, ToSchema)]
#[schema(as = UsageReport)]
pub struct UsageReportDoc {
    org: String,
    /// `YYYY-MM`.
    period: String,
    tier: TierDoc,
    as_of: i64,
    /// Query cycles, vCPU-hours and GB-hours measured by the proxy.
    #[schema(value_type = Object)]
    measured: Value,
    adjustments_vcpu_hours: String,
    total_vcpu_hours: String,
    #[schema(value_type = Vec<Object>)]
    by_day: Vec<Value>,
    #[schema(value_type = Vec<Object>)]
    by_database: Vec<Value>,
    adjustments: Vec<UsageAdjustmentDoc>,
    included_vcpu_hours: Option<String>,
    percent_used: Option<String>,
    projected_vcpu_hours: String,
    overage_per_vcpu_hour: Option<String>,
    overage_vcpu_hours: Option<String>,
    overage_cost: Option<String>,
    projected_overage_vcpu_hours: Option<String>,
    projected_overage_cost: Option<String>,
    currency: String,
}

/// A period's charge as billing computes it (docs/billing.md): usage, the
/// included hours, overage, rate, spend cap and the amount.
#[derive(Serialize, ToSchema)]
#[schema(as = Charge)]
pub struct ChargeDoc(HashMap<String, Value>);

/// A billing record: the charge, its state (`computed`, `pushed`,
/// `confirmed`, `skipped`, `failed`) and the provider's ids.
#[derive(Serialize, ToSchema)]
#[schema(as = BillingRecord)]
pub struct BillingRecordDoc(HashMap<String, Value>);

/// What a billing run did.
#[derive(Serialize, ToSchema)]
#[schema(as = BillingRunReport)]
pub struct RunReportDoc(HashMap<String, Value>);

/// A period's calibration (docs/calibration.md): rates, variance, alert,
/// per-tier and per-org figures.
#[derive(Serialize, ToSchema)]
#[schema(as = Calibration)]
pub struct CalibrationDoc(HashMap<String, Value>);

/// Revenue against cost per tier, and the orgs below cost.
#[derive(Serialize, ToSchema)]
#[schema(as = MarginReport)]
pub struct MarginReportDoc(HashMap<String, Value>);

/// What a lifecycle scheduler tick did.
#[derive(Serialize, ToSchema)]
#[schema(as = LifecycleTickReport)]
pub struct LifecycleTickDoc(HashMap<String, Value>);

/// What a scale-to-zero idle check did.
#[derive(Serialize, ToSchema)]
#[schema(as = ScaleTickReport)]
pub struct ScaleTickDoc {
    eligible: usize,
    suspended: Vec<String>,
    failed: Vec<String>,
}

// ---- request bodies ----

/// `POST /admin/orgs`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateOrgRequest, example = json!({"id": "initech", "name": "Initech", "tier": "starter", "upstream": "127.0.0.1:5432"}))]
pub struct CreateOrgDoc {
    /// Lower-case letters, digits and `-`, at most 63.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    id: String,
    #[schema(min_length = 1, pattern = "\\S")]
    name: String,
    tier: TierDoc,
    /// `host:port`, port 1 to 65535.
    #[schema(
        pattern = "^[^:]+:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
    )]
    upstream: String,
    stripe_customer_id: Option<String>,
    stripe_subscription_id: Option<String>,
}

/// `PATCH /admin/orgs/{id}`: the fields to change; `null` clears the
/// Stripe and Railway ids. A `tier` goes through the lifecycle (audited,
/// with `reason`).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UpdateOrgRequest, example = json!({"name": "Acme Corp", "tier": "pro", "reason": "upgrade"}))]
pub struct UpdateOrgDoc {
    #[schema(nullable = false, min_length = 1, pattern = "\\S")]
    name: Option<String>,
    #[schema(nullable = false)]
    tier: Option<TierDoc>,
    #[schema(
        nullable = false,
        pattern = "^[^:]+:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
    )]
    upstream: Option<String>,
    stripe_customer_id: Option<String>,
    stripe_subscription_id: Option<String>,
    railway_service_id: Option<String>,
    #[schema(nullable = false, min_length = 1, pattern = "\\S")]
    reason: Option<String>,
}

/// `PUT /admin/orgs/{id}/tier`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SetTierRequest, example = json!({"tier": "pro", "reason": "annual contract"}))]
pub struct SetTierDoc {
    tier: TierDoc,
    /// Goes into the audit log.
    #[schema(min_length = 1, pattern = "\\S")]
    reason: String,
}

/// `PUT /admin/orgs/{id}/notification-url`: a URL, or `null` to stop.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NotificationUrlRequest, example = json!({"url": "https://hooks.example.com/dynabase"}))]
pub struct NotificationUrlDoc {
    #[schema(
        required = true,
        pattern = "^https?://[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9-]{0,20}){0,3}(/[a-zA-Z0-9._~-]{0,20}){0,3}$"
    )]
    url: Option<String>,
}

/// `POST /admin/orgs/{id}/usage/adjustments`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AdjustmentRequest, example = json!({"vcpu_hours": "-1.5", "reason": "outage credit", "key": "credit-1"}))]
pub struct AdjustmentDoc {
    /// Non-zero decimal string: `"-1.5"` credits, `"2"` debits.
    #[schema(pattern = "^-?[0-9]{1,6}(\\.[0-9]{1,6})?$")]
    vcpu_hours: String,
    #[schema(min_length = 1, pattern = "\\S")]
    reason: String,
    /// `YYYY-MM`; absent or `null`: the current period.
    #[schema(pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$")]
    period: Option<String>,
    /// Idempotency key, 1 to 200 characters; absent or `null`: a new one.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    key: Option<String>,
}

/// Spend cap: a positive amount with at most two decimals, or
/// `{"amount":null}` to remove the cap.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SpendCapRequest, example = json!({"amount": "25.00", "action": "throttle"}))]
pub struct SpendCapRequestDoc {
    #[schema(required = true, pattern = "^[0-9]{1,9}(\\.[0-9]{1,2})?$")]
    amount: Option<String>,
    /// Default `refuse`.
    #[schema(nullable = false)]
    action: Option<CapActionDoc>,
}

/// `PUT /admin/modes`: either switch or both.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
// minProperties is set in `openapi::RequestMinimums`: utoipa-gen 5.5's
// `min_properties` attribute writes `maxProperties`.
#[schema(as = ModesRequest, example = json!({"billing": "shadow", "enforcement": "enforce"}))]
pub struct ModesRequestDoc {
    #[schema(nullable = false)]
    billing: Option<BillingModeDoc>,
    #[schema(nullable = false)]
    enforcement: Option<EnforcementDoc>,
}

/// `POST /admin/calibrations`: `period` alone reads Railway now; with
/// `bill_usd` (and optionally `vcpu_minutes`) the manual path.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CalibrateRequest, example = json!({"period": "2026-11", "bill_usd": "48.60"}))]
pub struct CalibrateDoc {
    #[schema(pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$")]
    period: String,
    #[schema(pattern = "^[0-9]{1,9}(\\.[0-9]{1,6})?$")]
    bill_usd: Option<String>,
    #[schema(pattern = "^[0-9]{1,9}(\\.[0-9]{1,6})?$")]
    vcpu_minutes: Option<String>,
}

/// Scheduler ticks: `now` in Unix milliseconds (in the future only with
/// `lifecycle.allow_clock_override`); the body may be empty.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TickRequest)]
pub struct TickDoc {
    now: Option<i64>,
}
