//! The billing rules: what one organization owes for one closed period.
//! Pure and exact (decimal, no floating point); `docs/billing.md` explains
//! the same rules with worked examples that the tests below reproduce.
//!
//! 1. total = measured vCPU-hours (the period total) + adjustments.
//! 2. The period is cut into segments at each tier change; each segment
//!    contributes its tier's included hours × its share of the period's
//!    time. A segment on a contract tier (no included hours) contributes
//!    total × its share: usage under contract is not billed here. The sum
//!    is rounded to six decimal places (half up), once.
//! 3. overage = max(0, total − included).
//! 4. rate = the overage price of the tier in force at the period's end;
//!    if that tier has none, of the latest earlier segment whose tier has
//!    one; if no segment's tier has one, nothing is billed (FREE follows
//!    the forced-upgrade policy; contract tiers are invoiced by contract).
//! 5. cost = overage × rate, rounded to cents (half up), once.
//! 6. With a spend cap, the charge is min(cost, cap).

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::domain::{
    catalog::TierCatalog,
    period_total::PeriodTotal,
    records::{Period, TierChange, UsageAdjustment},
    tier::Tier,
    time::UnixMillis,
};

/// Prorated included hours keep six decimal places.
pub const INCLUDED_DP: u32 = 6;
/// Money is charged in cents.
pub const MONEY_DP: u32 = 2;

/// A stretch of the period on one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierSegment {
    pub tier: Tier,
    pub from: UnixMillis,
    pub to: UnixMillis,
    /// What this segment contributes to the included hours (unrounded).
    pub included_vcpu_hours: Decimal,
}

/// Why a period is not charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Usage within the included hours (or a charge below one cent).
    NoOverage,
    /// No tier of the period has an overage price (FREE: Q2 policy).
    NoOveragePrice,
    /// The period ended on a contract tier.
    ByContract,
    /// Something to charge, but the org has no payment-provider customer.
    NoCustomer,
}

impl SkipReason {
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::NoOverage => "no overage",
            SkipReason::NoOveragePrice => "no overage price on the period's tiers (FREE policy)",
            SkipReason::ByContract => "billed by contract",
            SkipReason::NoCustomer => "no Stripe customer",
        }
    }
}

/// Everything a charge is computed from and what it comes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub period: Period,
    /// The tier in force at the period's end.
    pub tier: Tier,
    pub segments: Vec<TierSegment>,
    pub query_cycles: i64,
    pub measured_vcpu_hours: Decimal,
    pub adjustments_vcpu_hours: Decimal,
    pub total_vcpu_hours: Decimal,
    pub gb_hours: Decimal,
    /// Rounded to [`INCLUDED_DP`].
    pub included_vcpu_hours: Decimal,
    pub overage_vcpu_hours: Decimal,
    /// Price per vCPU-hour applied, and the tier it is from.
    pub rate: Option<Decimal>,
    pub rate_tier: Option<Tier>,
    /// overage × rate in cents, before any spend cap.
    pub uncapped_amount: Decimal,
    pub spend_cap: Option<Decimal>,
    /// What is charged: min(uncapped, cap), in cents.
    pub amount: Decimal,
    pub currency: String,
    /// `Some` when nothing is to be charged.
    pub skip: Option<SkipReason>,
}

impl Charge {
    /// The amount in the currency's minor unit (cents).
    pub fn amount_minor(&self) -> i64 {
        i64::try_from((self.amount * Decimal::ONE_HUNDRED).trunc()).unwrap_or(i64::MAX)
    }
}

/// What a charge is computed from.
pub struct ChargeInput<'a> {
    pub period: &'a Period,
    pub catalog: &'a TierCatalog,
    /// The org's tier now (used when no change says otherwise).
    pub current_tier: Tier,
    /// The org's tier changes, any order, any time.
    pub changes: &'a [TierChange],
    pub total: &'a PeriodTotal,
    pub adjustments: &'a [UsageAdjustment],
    pub spend_cap: Option<Decimal>,
    pub currency: &'a str,
}

/// The tier in force at `t`: the latest change at or before `t`, else what
/// the earliest change moved away from, else the current tier.
pub fn tier_at(changes: &[TierChange], t: UnixMillis, current: Tier) -> Tier {
    let mut sorted: Vec<&TierChange> = changes.iter().collect();
    sorted.sort_by_key(|c| c.at);
    match sorted.iter().rev().find(|c| c.at <= t) {
        Some(c) => c.to,
        None => sorted.first().map_or(current, |c| c.from),
    }
}

fn half_up(d: Decimal, dp: u32) -> Decimal {
    d.round_dp_with_strategy(dp, RoundingStrategy::MidpointAwayFromZero)
}

/// The period cut at each tier change, adjacent equal tiers merged.
pub fn segments(
    period: &Period,
    changes: &[TierChange],
    current: Tier,
) -> Vec<(Tier, UnixMillis, UnixMillis)> {
    let (start, end) = (period.start(), period.end());
    let mut cuts: Vec<UnixMillis> = changes
        .iter()
        .map(|c| c.at)
        .filter(|&at| at > start && at < end)
        .collect();
    cuts.sort();
    cuts.dedup();
    let mut out: Vec<(Tier, UnixMillis, UnixMillis)> = Vec::new();
    let mut from = start;
    for to in cuts.into_iter().chain(std::iter::once(end)) {
        let tier = tier_at(changes, from, current);
        match out.last_mut() {
            Some(last) if last.0 == tier => last.2 = to,
            _ => out.push((tier, from, to)),
        }
        from = to;
    }
    out
}

/// Applies the rules in the module doc.
pub fn compute(input: &ChargeInput<'_>) -> Charge {
    let measured = input.total.vcpu_hours();
    let adjustments: Decimal = input.adjustments.iter().map(|a| a.vcpu_hours).sum();
    let total = measured + adjustments;
    let period_ms = Decimal::from((input.period.end().0 - input.period.start().0).max(1));
    let segments: Vec<TierSegment> = segments(input.period, input.changes, input.current_tier)
        .into_iter()
        .map(|(tier, from, to)| {
            let share = Decimal::from(to.0 - from.0) / period_ms;
            let included = match input.catalog.get(tier).included_vcpu_hours {
                Some(hours) => hours * share,
                None => total.max(Decimal::ZERO) * share,
            };
            TierSegment {
                tier,
                from,
                to,
                included_vcpu_hours: included,
            }
        })
        .collect();
    let included = half_up(
        segments.iter().map(|s| s.included_vcpu_hours).sum(),
        INCLUDED_DP,
    );
    let overage = (total - included).max(Decimal::ZERO);
    let end_tier = segments.last().map_or(input.current_tier, |s| s.tier);
    let priced = segments.iter().rev().find_map(|s| {
        input
            .catalog
            .get(s.tier)
            .overage_per_vcpu_hour
            .map(|r| (s.tier, r))
    });
    let contract_end = input.catalog.get(end_tier).included_vcpu_hours.is_none();
    let (rate_tier, rate) = match priced {
        Some((tier, rate)) if !contract_end => (Some(tier), Some(rate)),
        _ => (None, None),
    };
    let uncapped = rate.map_or(Decimal::ZERO, |r| half_up(overage * r, MONEY_DP));
    let amount = match input.spend_cap {
        Some(cap) => uncapped.min(cap.max(Decimal::ZERO)),
        None => uncapped,
    };
    let amount = half_up(amount, MONEY_DP);
    let skip = if contract_end {
        Some(SkipReason::ByContract)
    } else if rate.is_none() {
        Some(SkipReason::NoOveragePrice)
    } else if amount <= Decimal::ZERO {
        Some(SkipReason::NoOverage)
    } else {
        None
    };
    Charge {
        period: input.period.clone(),
        tier: end_tier,
        segments,
        query_cycles: input.total.units.query_cycles,
        measured_vcpu_hours: measured.normalize(),
        adjustments_vcpu_hours: adjustments.normalize(),
        total_vcpu_hours: total.normalize(),
        gb_hours: input.total.gb_hours().normalize(),
        included_vcpu_hours: included,
        overage_vcpu_hours: overage.normalize(),
        rate,
        rate_tier,
        uncapped_amount: uncapped,
        spend_cap: input.spend_cap,
        amount,
        currency: input.currency.to_owned(),
        skip,
    }
}

#[cfg(test)]
#[path = "charge_tests.rs"]
mod tests;
