//! Organization administration shared by the HTTP API and the CLI: creating
//! organizations and changing them, with tier changes written to the audit log.

use dynabase_actors::{
    domain::records::TierChange, OrgId, Organization, Store, StoreError, Tier, UnixMillis, Upstream,
};

/// A new organization.
#[derive(Debug)]
pub struct CreateOrg {
    pub id: OrgId,
    pub name: String,
    pub tier: Tier,
    pub upstream: Upstream,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
}

/// A change to an organization: only the fields that are `Some` change
/// (`Some(None)` clears an optional field).
#[derive(Debug, Default)]
pub struct UpdateOrg {
    pub name: Option<String>,
    pub tier: Option<Tier>,
    pub upstream: Option<Upstream>,
    pub stripe_customer_id: Option<Option<String>>,
    pub stripe_subscription_id: Option<Option<String>>,
    /// The Railway service of the org's database (calibration).
    pub railway_service_id: Option<Option<String>>,
    /// Why; recorded with a tier change.
    pub reason: Option<String>,
}

impl UpdateOrg {
    /// Whether any field is set (`reason` alone changes nothing).
    pub fn changes_anything(&self) -> bool {
        self.name.is_some()
            || self.tier.is_some()
            || self.upstream.is_some()
            || self.stripe_customer_id.is_some()
            || self.stripe_subscription_id.is_some()
            || self.railway_service_id.is_some()
    }
}

pub async fn create(
    store: &dyn Store,
    req: CreateOrg,
    now: UnixMillis,
) -> Result<Organization, StoreError> {
    let org = Organization {
        id: req.id,
        name: req.name,
        tier: req.tier,
        upstream: req.upstream,
        stripe_customer_id: req.stripe_customer_id,
        stripe_subscription_id: req.stripe_subscription_id,
        pending_tier_change: None,
        created_at: now,
        updated_at: now,
        lifecycle: Default::default(),
        compute: Default::default(),
    };
    store.create_org(&org).await?;
    tracing::info!(org = %org.id, tier = %org.tier, "organization created");
    Ok(org)
}

/// Applies `change`; `source` names who made it (`admin`, `cli`).
pub async fn update(
    store: &dyn Store,
    id: &OrgId,
    change: UpdateOrg,
    source: &str,
    now: UnixMillis,
) -> Result<Organization, StoreError> {
    let mut org = store
        .get_org(id)
        .await?
        .ok_or_else(|| StoreError::NotFound(id.clone()))?;
    let previous_tier = org.tier;
    if let Some(name) = change.name {
        org.name = name;
    }
    if let Some(tier) = change.tier {
        if tier != org.tier {
            // A manual change supersedes a scheduled one (see docs/lifecycle.md).
            org.pending_tier_change = None;
        }
        org.tier = tier;
    }
    if let Some(upstream) = change.upstream {
        org.upstream = upstream;
    }
    if let Some(v) = change.stripe_customer_id {
        org.stripe_customer_id = v;
    }
    if let Some(v) = change.railway_service_id {
        org.lifecycle.railway_service_id = v;
    }
    if let Some(v) = change.stripe_subscription_id {
        org.stripe_subscription_id = v;
    }
    // Never backwards, even if this writer's clock is behind the last
    // one's: replicas keep the record with the newest `updated_at`.
    org.updated_at = UnixMillis(now.0.max(org.updated_at.0.saturating_add(1)));
    // The organization first: a lost audit entry is better than an audit
    // entry for a change that did not happen.
    store.update_org(&org).await?;
    if org.tier != previous_tier {
        store
            .append_tier_change(&TierChange {
                org: org.id.clone(),
                from: previous_tier,
                to: org.tier,
                source: source.to_owned(),
                reason: change
                    .reason
                    .unwrap_or_else(|| format!("changed by {source}")),
                at: now,
            })
            .await?;
        tracing::info!(org = %org.id, from = %previous_tier, to = %org.tier, source, "tier changed");
    }
    Ok(org)
}
