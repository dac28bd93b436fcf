//! Calibration arithmetic (spec "Monthly Calibration", DESIGN.md Q1/Q4),
//! exact in decimal and pure:
//!
//! - `railway_bill`: the bill an operator entered, else what Railway
//!   measured × Railway's prices (vCPU-minutes and GB-minutes);
//! - `actual_rate = railway_bill / estimated vCPU-hours`;
//! - `default_rate` = Railway's vCPU price per hour (what our estimates
//!   assume one estimated vCPU-hour costs);
//! - `variance = |actual_rate − default_rate| / actual_rate`;
//! - an alert above the threshold (20%); the factors are never changed
//!   (Q4), the record suggests the change an operator could make.
//!
//! No estimate, no bill, or a zero bill give a record that says so, never
//! a division by zero.

use std::collections::BTreeMap;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use super::{source::Measured, CalibrationConfig};
use crate::domain::{org_id::OrgId, records::Period, tier::Tier, time::UnixMillis};

/// Rates and variances keep six decimal places.
const DP: u32 = 6;

fn round(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(DP, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
}

/// One org's estimate, and Railway's measurement of its service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgComparison {
    pub org: OrgId,
    pub service_id: String,
    pub estimated_vcpu_hours: Decimal,
    pub measured_vcpu_hours: Decimal,
    /// |estimated − measured| / measured; `None` when nothing was measured.
    pub variance: Option<Decimal>,
    /// Memory, the same way (absent from records written before it was kept).
    #[serde(default)]
    pub estimated_gb_hours: Decimal,
    #[serde(default)]
    pub measured_gb_hours: Decimal,
    #[serde(default)]
    pub gb_variance: Option<Decimal>,
}

/// Estimates per tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierEstimate {
    pub tier: Tier,
    pub orgs: u32,
    pub estimated_vcpu_hours: Decimal,
    pub estimated_gb_hours: Decimal,
}

/// What a calibration is computed from.
pub struct CalibrationInput<'a> {
    pub period: &'a Period,
    pub config: &'a CalibrationConfig,
    /// Per org: tier, estimated vCPU-hours, estimated GB-hours, Railway
    /// service id.
    pub estimates: &'a [(OrgId, Tier, Decimal, Decimal, Option<String>)],
    /// Railway's measurement, when it could be read.
    pub measured: Option<&'a Measured>,
    /// A bill an operator entered (overrides the measured cost).
    pub manual_bill: Option<Decimal>,
    pub source: &'a str,
    pub error: Option<String>,
    pub now: UnixMillis,
}

/// The stored result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calibration {
    pub period: Period,
    /// `railway_api` or `manual`.
    pub source: String,
    pub railway_bill: Option<Decimal>,
    pub measured_vcpu_minutes: Option<Decimal>,
    pub measured_gb_minutes: Option<Decimal>,
    pub estimated_vcpu_hours: Decimal,
    pub estimated_gb_hours: Decimal,
    pub default_rate: Decimal,
    pub actual_rate: Option<Decimal>,
    pub variance: Option<Decimal>,
    /// The same for memory, when Railway's GB-minutes are known.
    pub default_gb_rate: Decimal,
    pub actual_gb_rate: Option<Decimal>,
    pub gb_variance: Option<Decimal>,
    pub threshold: Decimal,
    pub alert: bool,
    pub by_tier: Vec<TierEstimate>,
    /// Orgs mapped to a Railway service, furthest off first.
    pub by_org: Vec<OrgComparison>,
    /// The factor change that would match Railway (never applied).
    pub suggestion: Option<String>,
    /// Why figures are missing (token, API error, no usage, zero bill).
    pub note: Option<String>,
    pub created_at: UnixMillis,
}

fn ratio(numerator: Decimal, denominator: Decimal) -> Option<Decimal> {
    (!denominator.is_zero()).then(|| numerator / denominator)
}

pub fn calibrate(input: &CalibrationInput<'_>) -> Calibration {
    let c = input.config;
    let minutes = Decimal::from(60);
    let estimated_vcpu: Decimal = input.estimates.iter().map(|e| e.2).sum();
    let estimated_gb: Decimal = input.estimates.iter().map(|e| e.3).sum();
    let measured_cost = input
        .measured
        .map(|m| m.vcpu_minutes * c.vcpu_minute_price + m.gb_minutes * c.gb_minute_price);
    // The bill in cents, as an invoice shows it; the rates are from that.
    let bill = input
        .manual_bill
        .or(measured_cost)
        .map(|b| b.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero));
    let default_rate = c.vcpu_minute_price * minutes;
    let default_gb_rate = c.gb_minute_price * minutes;
    let actual_rate = bill
        .filter(|b| !b.is_zero())
        .and_then(|b| ratio(b, estimated_vcpu));
    let variance = actual_rate.and_then(|a| ratio((a - default_rate).abs(), a));
    let actual_gb_rate = input
        .measured
        .filter(|m| !m.gb_minutes.is_zero())
        .and_then(|m| ratio(m.gb_minutes * c.gb_minute_price, estimated_gb));
    let gb_variance = actual_gb_rate.and_then(|a| ratio((a - default_gb_rate).abs(), a));
    // A calibration that could not read the bill is an alert too: nobody
    // checked the month.
    let alert = variance.is_some_and(|v| v > c.threshold) || input.error.is_some();
    let note = input.error.clone().or_else(|| {
        if estimated_vcpu.is_zero() {
            Some("no estimated usage in the period: no rate to compare".to_owned())
        } else if bill.is_none() {
            Some("no bill: neither measurements nor a manual bill".to_owned())
        } else if bill.is_some_and(|b| b.is_zero()) {
            Some("the bill is zero: no rate to compare".to_owned())
        } else {
            None
        }
    });
    let suggestion = match (alert, actual_rate) {
        (true, Some(actual)) => Some(format!(
            "estimates are off by {}%: multiplying every usage factor's complexity by {} would \
             match Railway's rate (not applied: operators decide, DESIGN.md Q4)",
            round(variance.unwrap_or_default() * Decimal::ONE_HUNDRED),
            round(actual / default_rate)
        )),
        _ => None,
    };
    let mut tiers: BTreeMap<Tier, TierEstimate> = BTreeMap::new();
    for (_, tier, vcpu, gb, _) in input.estimates {
        let t = tiers.entry(*tier).or_insert(TierEstimate {
            tier: *tier,
            orgs: 0,
            estimated_vcpu_hours: Decimal::ZERO,
            estimated_gb_hours: Decimal::ZERO,
        });
        t.orgs += 1;
        t.estimated_vcpu_hours += *vcpu;
        t.estimated_gb_hours += *gb;
    }
    let mut by_org: Vec<OrgComparison> = input
        .measured
        .map(|m| {
            input
                .estimates
                .iter()
                .filter_map(|(org, _, vcpu, gb, service)| {
                    let service = service.as_ref()?;
                    let (minutes_measured, gb_minutes) = m.by_service.get(service)?;
                    let measured = *minutes_measured / minutes;
                    let measured_gb = *gb_minutes / minutes;
                    Some(OrgComparison {
                        org: org.clone(),
                        service_id: service.clone(),
                        estimated_vcpu_hours: round(*vcpu),
                        measured_vcpu_hours: round(measured),
                        variance: ratio((*vcpu - measured).abs(), measured).map(round),
                        estimated_gb_hours: round(*gb),
                        measured_gb_hours: round(measured_gb),
                        gb_variance: ratio((*gb - measured_gb).abs(), measured_gb).map(round),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    by_org.sort_by(|a, b| b.variance.cmp(&a.variance).then(a.org.cmp(&b.org)));
    Calibration {
        period: input.period.clone(),
        source: input.source.to_owned(),
        railway_bill: bill,
        measured_vcpu_minutes: input.measured.map(|m| m.vcpu_minutes.normalize()),
        measured_gb_minutes: input.measured.map(|m| m.gb_minutes.normalize()),
        estimated_vcpu_hours: round(estimated_vcpu),
        estimated_gb_hours: round(estimated_gb),
        default_rate: round(default_rate),
        actual_rate: actual_rate.map(round),
        variance: variance.map(round),
        default_gb_rate: round(default_gb_rate),
        actual_gb_rate: actual_gb_rate.map(round),
        gb_variance: gb_variance.map(round),
        threshold: c.threshold,
        alert,
        by_tier: tiers.into_values().collect(),
        by_org,
        suggestion,
        note,
        created_at: input.now,
    }
}

#[cfg(test)]
#[path = "compute_tests.rs"]
mod tests;
