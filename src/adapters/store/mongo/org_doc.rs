//! The `organizations` document: the domain's `Organization` in camelCase
//! BSON, with instants as Unix milliseconds.

use dynabase_actors::{
    domain::{
        compute::Compute,
        organization::{LifecycleState, PendingTierChange},
        spend::{CapReached, FreeOverage, SpendCap},
    },
    tenant::enforcement::Enforcement,
    OrgId, Organization, Tier, UnixMillis, Upstream,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PendingDoc {
    to: Tier,
    effective_at: i64,
    reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LifecycleDoc {
    #[serde(default)]
    past_due_since: Option<i64>,
    #[serde(default)]
    notification_url: Option<String>,
    // Money controls keep the domain's own (snake_case) shape: amounts are
    // decimal strings, instants Unix milliseconds.
    #[serde(default)]
    spend_cap: Option<SpendCap>,
    #[serde(default)]
    cap_reached: Option<CapReached>,
    #[serde(default)]
    free_overage: Option<FreeOverage>,
    #[serde(default)]
    railway_service_id: Option<String>,
    #[serde(default)]
    enforcement: Option<Enforcement>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OrgDoc {
    #[serde(rename = "_id")]
    id: OrgId,
    name: String,
    tier: Tier,
    upstream: Upstream,
    stripe_customer_id: Option<String>,
    stripe_subscription_id: Option<String>,
    pending_tier_change: Option<PendingDoc>,
    created_at: i64,
    updated_at: i64,
    /// Absent in documents written before the tier lifecycle existed.
    #[serde(default)]
    lifecycle: LifecycleDoc,
    /// The domain's own (snake_case) shape, like the spend cap; absent in
    /// documents written before scale-to-zero (always on, active).
    #[serde(default)]
    compute: Compute,
}

impl From<&Organization> for OrgDoc {
    fn from(o: &Organization) -> Self {
        Self {
            id: o.id.clone(),
            name: o.name.clone(),
            tier: o.tier,
            upstream: o.upstream.clone(),
            stripe_customer_id: o.stripe_customer_id.clone(),
            stripe_subscription_id: o.stripe_subscription_id.clone(),
            pending_tier_change: o.pending_tier_change.as_ref().map(|p| PendingDoc {
                to: p.to,
                effective_at: p.effective_at.0,
                reason: p.reason.clone(),
            }),
            created_at: o.created_at.0,
            updated_at: o.updated_at.0,
            lifecycle: LifecycleDoc {
                past_due_since: o.lifecycle.past_due_since.map(|t| t.0),
                notification_url: o.lifecycle.notification_url.clone(),
                spend_cap: o.lifecycle.spend_cap.clone(),
                cap_reached: o.lifecycle.cap_reached.clone(),
                free_overage: o.lifecycle.free_overage.clone(),
                railway_service_id: o.lifecycle.railway_service_id.clone(),
                enforcement: o.lifecycle.enforcement,
            },
            compute: o.compute.clone(),
        }
    }
}

impl From<OrgDoc> for Organization {
    fn from(d: OrgDoc) -> Self {
        Self {
            id: d.id,
            name: d.name,
            tier: d.tier,
            upstream: d.upstream,
            stripe_customer_id: d.stripe_customer_id,
            stripe_subscription_id: d.stripe_subscription_id,
            pending_tier_change: d.pending_tier_change.map(|p| PendingTierChange {
                to: p.to,
                effective_at: UnixMillis(p.effective_at),
                reason: p.reason,
            }),
            created_at: UnixMillis(d.created_at),
            updated_at: UnixMillis(d.updated_at),
            lifecycle: LifecycleState {
                past_due_since: d.lifecycle.past_due_since.map(UnixMillis),
                notification_url: d.lifecycle.notification_url,
                spend_cap: d.lifecycle.spend_cap,
                cap_reached: d.lifecycle.cap_reached,
                free_overage: d.lifecycle.free_overage,
                railway_service_id: d.lifecycle.railway_service_id,
                enforcement: d.lifecycle.enforcement,
            },
            compute: d.compute,
        }
    }
}
