//! Every organization's charge for one period, from four bulk reads (the
//! orgs, the period's totals, its adjustments and the tier changes since it
//! began): the number of store reads does not grow with the number of orgs.
//! Pure apart from those reads; the preview and the job share it.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;

use super::{
    charge::{compute, Charge, ChargeInput, SkipReason},
    BillingConfig,
};
use crate::{
    domain::{
        catalog::TierCatalog,
        org_id::OrgId,
        period_total::PeriodTotal,
        records::{Period, TierChange, UsageAdjustment},
    },
    store::{Store, StoreError},
};

/// One organization's charge and where it would go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrgCharge {
    pub org: OrgId,
    pub customer_id: Option<String>,
    pub subscription_id: Option<String>,
    pub charge: Charge,
    /// Why nothing would be pushed: the charge's own reason, or no customer.
    pub skip: Option<SkipReason>,
}

/// The charges of every org that existed during the period, by org id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub period: Period,
    pub charges: Vec<OrgCharge>,
    /// Store reads made, whatever the number of orgs.
    pub store_reads: u32,
}

impl Plan {
    /// Σ amount of the charges that would be pushed.
    pub fn total_amount(&self) -> rust_decimal::Decimal {
        self.charges
            .iter()
            .filter(|c| c.skip.is_none())
            .map(|c| c.charge.amount)
            .sum()
    }
}

/// Computes the plan for `period`.
pub async fn plan(
    store: &Arc<dyn Store>,
    catalog: &TierCatalog,
    config: &BillingConfig,
    period: &Period,
) -> Result<Plan, StoreError> {
    let orgs = store.list_orgs().await?;
    let totals: HashMap<OrgId, PeriodTotal> = store
        .period_totals(period)
        .await?
        .into_iter()
        .map(|t| (t.org.clone(), t))
        .collect();
    let mut adjustments: HashMap<OrgId, Vec<UsageAdjustment>> = HashMap::new();
    for a in store.adjustments_for_period(period).await? {
        adjustments.entry(a.org.clone()).or_default().push(a);
    }
    let mut changes: HashMap<OrgId, Vec<TierChange>> = HashMap::new();
    for c in store.tier_changes_since(period.start()).await? {
        changes.entry(c.org.clone()).or_default().push(c);
    }
    let mut charges = Vec::with_capacity(orgs.len());
    for org in orgs {
        if org.created_at >= period.end() {
            continue;
        }
        let total = totals
            .get(&org.id)
            .cloned()
            .unwrap_or_else(|| PeriodTotal::zero(org.id.clone(), period.clone()));
        let charge = compute(&ChargeInput {
            period,
            catalog,
            current_tier: org.tier,
            changes: changes.get(&org.id).map_or(&[], Vec::as_slice),
            total: &total,
            adjustments: adjustments.get(&org.id).map_or(&[], Vec::as_slice),
            spend_cap: org.lifecycle.spend_cap.as_ref().map(|c| c.amount),
            currency: &config.currency,
        });
        let skip = charge.skip.or_else(|| {
            org.stripe_customer_id
                .is_none()
                .then_some(SkipReason::NoCustomer)
        });
        charges.push(OrgCharge {
            org: org.id,
            customer_id: org.stripe_customer_id,
            subscription_id: org.stripe_subscription_id,
            charge,
            skip,
        });
    }
    charges.sort_by(|a, b| a.org.cmp(&b.org));
    Ok(Plan {
        period: period.clone(),
        charges,
        store_reads: 4,
    })
}
