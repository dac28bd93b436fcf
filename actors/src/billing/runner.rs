//! `BillingRunner`: the supervised actor that bills closed periods.
//!
//! [`RunPeriod`] (the admin API, the CLI) and [`BillingTick`] (the
//! schedule: the last closed period, then every record due for a retry)
//! record one billing record per org and period — keyed, so replicas and
//! re-runs never record two — and push the `computed` ones (`push.rs`).
//! [`Preview`] computes the same charges without writing anything.

use std::{collections::HashMap, sync::Arc};

use actix::{Handler, Message, ResponseFuture};
use futures_util::{stream, StreamExt};
use rust_decimal::Decimal;
use serde::Serialize;

use super::{
    charge::SkipReason,
    current_mode,
    plan::{plan, OrgCharge, Plan},
    provider::InvoiceItems,
    push::{push, PushOutcome},
    BillingConfig, BillingMode,
};
use crate::{
    domain::{
        billing_record::{billing_key, BillingRecord, BillingState},
        catalog::TierCatalog,
        records::{Period, Write},
        time::UnixMillis,
    },
    lifecycle::notifier::{NotificationKind, Notifier},
    store::{Store, StoreError},
};

/// Pushes in flight at once.
const CONCURRENCY: usize = 8;
/// Due records read per round.
const BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum BillingJobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("period {period} is not closed yet: it can be billed from {closes_at}")]
    NotClosed { period: Period, closes_at: String },
}

/// Bill `period` now (refused while it is open).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<RunReport, BillingJobError>")]
pub struct RunPeriod {
    pub period: Period,
    pub now: UnixMillis,
}

/// What the job would charge for `period`, without side effects.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Plan, BillingJobError>")]
pub struct Preview {
    pub period: Period,
}

/// The schedule: bill the last closed period, retry what is due.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<RunReport, BillingJobError>")]
pub struct BillingTick {
    pub now: UnixMillis,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunReport {
    pub period: Option<Period>,
    /// Orgs planned.
    pub orgs: usize,
    /// Records written by this run (others had one already).
    pub recorded: usize,
    pub already_recorded: usize,
    /// Records written as `skipped`, by reason.
    pub skipped: usize,
    /// Push outcomes.
    pub created: usize,
    pub found_existing: usize,
    pub retrying: usize,
    pub failed: usize,
    /// Σ amount of the items created or adopted.
    pub amount_pushed: Decimal,
    /// Store reads made to plan (independent of the number of orgs).
    pub plan_store_reads: u32,
    /// `shadow`: recorded, nothing sent.
    pub mode: BillingMode,
}

/// What the runner is built from.
pub struct RunnerDeps {
    pub store: Arc<dyn Store>,
    pub catalog: Arc<TierCatalog>,
    pub provider: Arc<dyn InvoiceItems>,
    pub config: BillingConfig,
    pub notifier: Notifier,
}

pub struct BillingRunner {
    restarts: u32,
    deps: Arc<RunnerDeps>,
}

impl BillingRunner {
    pub fn new(deps: Arc<RunnerDeps>) -> Self {
        Self { restarts: 0, deps }
    }
}

crate::supervised_actor!(BillingRunner, "billing_runner");

fn new_record(c: &OrgCharge, now: UnixMillis, mode: BillingMode) -> BillingRecord {
    BillingRecord {
        key: billing_key(&c.org, &c.charge.period),
        org: c.org.clone(),
        period: c.charge.period.clone(),
        state: if c.skip.is_some() {
            BillingState::Skipped
        } else {
            BillingState::Computed
        },
        skip: c.skip,
        charge: c.charge.clone(),
        shadow: mode == BillingMode::Shadow,
        customer_id: c.customer_id.clone(),
        subscription_id: c.subscription_id.clone(),
        provider_item_id: None,
        provider_invoice_id: None,
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
        created_at: now,
        updated_at: now,
    }
}

/// Records the plan: a new record per org without one; a record skipped
/// for want of a customer becomes `computed` once the org has one; a shadow
/// record becomes a live one when the mode is live.
async fn record_plan(
    deps: &RunnerDeps,
    plan: &Plan,
    report: &mut RunReport,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let mode = report.mode;
    let existing: HashMap<String, BillingRecord> = deps
        .store
        .billing_records_for_period(&plan.period)
        .await?
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect();
    let writes = stream::iter(plan.charges.iter())
        .map(|c| {
            let found = existing.get(&billing_key(&c.org, &plan.period)).cloned();
            async move {
                match found {
                    None => {
                        let record = new_record(c, now, mode);
                        let write = deps.store.insert_billing_record(&record).await?;
                        Ok::<_, StoreError>((write, record.state))
                    }
                    Some(r)
                        if (r.skip == Some(SkipReason::NoCustomer) && c.skip.is_none())
                            || (r.shadow
                                && mode == BillingMode::Live
                                && r.state != BillingState::Pushed
                                && r.state != BillingState::Confirmed) =>
                    {
                        let mut recomputed = new_record(c, now, mode);
                        recomputed.created_at = r.created_at;
                        recomputed.updated_at = UnixMillis(now.0.max(r.updated_at.0 + 1));
                        deps.store
                            .update_billing_record_if_unchanged(&recomputed, r.updated_at)
                            .await?;
                        Ok((Write::Applied, recomputed.state))
                    }
                    Some(r) => Ok((Write::AlreadyApplied, r.state)),
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    for write in writes {
        match write? {
            (Write::Applied, state) => {
                report.recorded += 1;
                if state == BillingState::Skipped {
                    report.skipped += 1;
                }
                metrics::counter!("dynabase_billing_records_total", "state" => state.as_str())
                    .increment(1);
            }
            (Write::AlreadyApplied, _) => report.already_recorded += 1,
        }
    }
    Ok(())
}

/// Pushes every `computed` record due at `now`, any period (none in
/// shadow mode).
async fn push_due(
    deps: &RunnerDeps,
    report: &mut RunReport,
    now: UnixMillis,
) -> Result<(), StoreError> {
    if report.mode == BillingMode::Shadow {
        return Ok(());
    }
    loop {
        let due = deps
            .store
            .due_billing_records(BillingState::Computed, now, BATCH)
            .await?;
        let round = due.len();
        let outcomes = stream::iter(due)
            .map(|record| async move {
                let (amount, tier, org) =
                    (record.charge.amount, record.charge.tier, record.org.clone());
                let outcome = push(
                    &deps.store,
                    deps.provider.as_ref(),
                    &deps.config,
                    record,
                    now,
                )
                .await;
                (outcome, amount, tier, org)
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut progressed = false;
        for (outcome, amount, tier, org) in outcomes {
            let outcome = outcome?;
            let label = match outcome {
                PushOutcome::NotClaimed => "not_claimed",
                PushOutcome::Created => "created",
                PushOutcome::FoundExisting => "found_existing",
                PushOutcome::Retrying => "retrying",
                PushOutcome::Failed => "failed",
            };
            metrics::counter!("dynabase_billing_items_total", "result" => label).increment(1);
            match outcome {
                PushOutcome::Created | PushOutcome::FoundExisting => {
                    progressed = true;
                    if outcome == PushOutcome::Created {
                        report.created += 1;
                    } else {
                        report.found_existing += 1;
                    }
                    report.amount_pushed += amount;
                    let cents = u64::try_from((amount * Decimal::ONE_HUNDRED).trunc()).unwrap_or(0);
                    metrics::counter!("dynabase_billing_amount_cents_total", "tier" => tier.as_str())
                        .increment(cents);
                }
                PushOutcome::Retrying => report.retrying += 1,
                PushOutcome::Failed => {
                    progressed = true;
                    report.failed += 1;
                    notify_failure(deps, &org, now).await;
                }
                PushOutcome::NotClaimed => {}
            }
        }
        // Records that were due but not pushed (another replica has them, or
        // a retry is scheduled) would come back in the same order: stop.
        if round < BATCH || !progressed {
            return Ok(());
        }
    }
}

async fn notify_failure(deps: &RunnerDeps, org: &crate::domain::org_id::OrgId, now: UnixMillis) {
    let Ok(Some(organization)) = deps.store.get_org(org).await else {
        return;
    };
    let records = deps
        .store
        .billing_records_for_org(org)
        .await
        .unwrap_or_default();
    let Some(failed) = records
        .iter()
        .rev()
        .find(|r| r.state == BillingState::Failed)
    else {
        return;
    };
    let message = format!(
        "The overage charge of {} {} for organization {org}, period {}, was refused by the \
         payment provider: {}",
        failed.charge.amount,
        failed.charge.currency.to_uppercase(),
        failed.period,
        failed.last_error.as_deref().unwrap_or("no reason given")
    );
    tracing::error!(org = %org, period = %failed.period, "billing failed: {message}");
    if let Err(e) = deps
        .notifier
        .notify(
            &organization,
            NotificationKind::BillingFailed,
            message,
            format!("billing-failed:{}", failed.key),
            now,
        )
        .await
    {
        tracing::warn!(org = %org, error = %e, "billing failure notification not recorded");
    }
}

/// Bills `period` at `now` (what [`RunPeriod`] does), outside the actor:
/// the CLI uses it.
pub async fn run_period(
    deps: Arc<RunnerDeps>,
    period: Period,
    now: UnixMillis,
) -> Result<RunReport, BillingJobError> {
    if !deps.config.is_closed(&period, now) {
        return Err(BillingJobError::NotClosed {
            closes_at: period.end().plus(deps.config.settle_delay).to_rfc3339(),
            period,
        });
    }
    let mode = current_mode(deps.store.as_ref(), &deps.config).await?;
    metrics::counter!("dynabase_billing_runs_total", "mode" => mode.as_str()).increment(1);
    let plan = plan(&deps.store, &deps.catalog, &deps.config, &period).await?;
    let mut report = RunReport {
        period: Some(period.clone()),
        orgs: plan.charges.len(),
        plan_store_reads: plan.store_reads,
        mode,
        ..RunReport::default()
    };
    record_plan(&deps, &plan, &mut report, now).await?;
    push_due(&deps, &mut report, now).await?;
    tracing::info!(period = %period, ?report, "billing run");
    Ok(report)
}

impl Handler<RunPeriod> for BillingRunner {
    type Result = ResponseFuture<Result<RunReport, BillingJobError>>;

    fn handle(&mut self, msg: RunPeriod, _: &mut Self::Context) -> Self::Result {
        Box::pin(run_period(self.deps.clone(), msg.period, msg.now))
    }
}

impl Handler<Preview> for BillingRunner {
    type Result = ResponseFuture<Result<Plan, BillingJobError>>;

    fn handle(&mut self, msg: Preview, _: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(
            async move { Ok(plan(&deps.store, &deps.catalog, &deps.config, &msg.period).await?) },
        )
    }
}

impl Handler<BillingTick> for BillingRunner {
    type Result = ResponseFuture<Result<RunReport, BillingJobError>>;

    fn handle(&mut self, msg: BillingTick, _: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(async move {
            let period = deps.config.last_closed(msg.now);
            // Cheap when done: one read of the period's records.
            let recorded = deps.store.billing_records_for_period(&period).await?.len();
            let billable = deps.store.count_orgs_created_before(period.end()).await?;
            if recorded < billable {
                return run_period(deps, period, msg.now).await;
            }
            let mut report = RunReport {
                mode: current_mode(deps.store.as_ref(), &deps.config).await?,
                ..RunReport::default()
            };
            push_due(&deps, &mut report, msg.now).await?;
            Ok(report)
        })
    }
}
