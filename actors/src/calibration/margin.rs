//! Gross margin per tier for a period (the spec's business metric: gross
//! margin above 70% across tiers): revenue (base fees + overage charged)
//! against cost (the calibrated rate × estimated vCPU-hours). Pure.

use std::collections::BTreeMap;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use crate::domain::{
    billing_record::{BillingRecord, BillingState},
    catalog::TierCatalog,
    org_id::OrgId,
    records::Period,
    tier::Tier,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierMargin {
    pub tier: Tier,
    pub orgs: u32,
    pub base_fees: Decimal,
    pub overage: Decimal,
    pub revenue: Decimal,
    pub cost: Decimal,
    /// (revenue − cost) / revenue; `None` without revenue.
    pub gross_margin: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrgMargin {
    pub org: OrgId,
    pub tier: Tier,
    pub revenue: Decimal,
    pub cost: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MarginReport {
    pub period: Period,
    /// Cost per estimated vCPU-hour used, and where it came from.
    pub rate: Decimal,
    pub rate_source: &'static str,
    pub tiers: Vec<TierMargin>,
    pub negative_margin_orgs: Vec<OrgMargin>,
}

fn cents(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// `orgs`: id, tier at the period's end, estimated vCPU-hours. `rate`:
/// the calibrated rate (or the default one) and its source.
pub fn margins(
    period: &Period,
    catalog: &TierCatalog,
    orgs: &[(OrgId, Tier, Decimal)],
    records: &[BillingRecord],
    rate: (Decimal, &'static str),
) -> MarginReport {
    let charged: BTreeMap<&OrgId, Decimal> = records
        .iter()
        .filter(|r| {
            matches!(
                r.state,
                BillingState::Computed | BillingState::Pushed | BillingState::Confirmed
            )
        })
        .map(|r| (&r.org, r.charge.amount))
        .collect();
    let mut tiers: BTreeMap<Tier, TierMargin> = BTreeMap::new();
    let mut negative = Vec::new();
    for (org, tier, vcpu_hours) in orgs {
        let base = catalog.get(*tier).base_fee.unwrap_or(Decimal::ZERO);
        let overage = charged.get(org).copied().unwrap_or(Decimal::ZERO);
        let cost = *vcpu_hours * rate.0;
        let t = tiers.entry(*tier).or_insert(TierMargin {
            tier: *tier,
            orgs: 0,
            base_fees: Decimal::ZERO,
            overage: Decimal::ZERO,
            revenue: Decimal::ZERO,
            cost: Decimal::ZERO,
            gross_margin: None,
        });
        t.orgs += 1;
        t.base_fees += base;
        t.overage += overage;
        t.cost += cost;
        if base + overage < cost {
            negative.push(OrgMargin {
                org: org.clone(),
                tier: *tier,
                revenue: cents(base + overage),
                cost: cents(cost),
            });
        }
    }
    let tiers = tiers
        .into_values()
        .map(|mut t| {
            t.revenue = cents(t.base_fees + t.overage);
            t.cost = cents(t.cost);
            t.gross_margin = (!t.revenue.is_zero()).then(|| {
                ((t.revenue - t.cost) / t.revenue)
                    .round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero)
            });
            t
        })
        .collect();
    negative.sort_by_key(|o| o.revenue - o.cost);
    MarginReport {
        period: period.clone(),
        rate: rate.0,
        rate_source: rate.1,
        tiers,
        negative_margin_orgs: negative,
    }
}
