//! `dynabase billing …`, `dynabase calibrate` and `dynabase usage
//! reconcile`: billing, calibration and the period totals' reconciliation,
//! run directly against the configured store (and Stripe or Railway),
//! without a server.

use std::sync::Arc;

use dynabase_actors::{
    billing::{
        plan::plan,
        provider::{InvoiceItems, NoInvoiceItems},
        runner::{run_period, BillingJobError, RunnerDeps},
    },
    calibration::source::{NoUsageSource, UsageSource},
    calibrator::{compute, CalibratorDeps},
    domain::{
        period_total::{PeriodTotal, Reconciliation},
        records::Period,
    },
    lifecycle::notifier::Notifier,
    OrgId, StoreError, UnixMillis,
};

use crate::{
    adapters::{
        railway::{RailwayClientError, RailwayUsage},
        stripe_billing::{StripeBillingError, StripeInvoiceItems},
    },
    app::{open_store, AppError},
    cli::{BillingCommand, UsageCommand},
    settings::Settings,
};

#[derive(Debug, thiserror::Error)]
pub enum BillingCliError {
    #[error("{0}")]
    BadArgument(String),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Job(#[from] BillingJobError),
    #[error("Stripe API client: {0}")]
    Stripe(#[from] StripeBillingError),
    #[error("Railway API client: {0}")]
    Railway(#[from] RailwayClientError),
    #[error("cannot print JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0} period total(s) differ from their records")]
    Mismatch(usize),
}

fn period(raw: &str) -> Result<Period, BillingCliError> {
    Period::parse(raw).map_err(|e| BillingCliError::BadArgument(format!("--period: {e}")))
}

/// Runs one `billing` command and returns what to print.
pub async fn billing(
    settings: &Settings,
    command: BillingCommand,
) -> Result<String, BillingCliError> {
    let (store, _) = open_store(&settings.store).await?;
    let config = settings.billing.config.clone();
    match command {
        BillingCommand::Preview { period: p } => {
            let plan = plan(&store, &settings.catalog, &config, &period(&p)?).await?;
            Ok(serde_json::to_string_pretty(&plan)?)
        }
        BillingCommand::Run { period: p, now } => {
            let provider: Arc<dyn InvoiceItems> =
                match StripeInvoiceItems::from_settings(&settings.stripe)? {
                    Some(client) => Arc::new(client),
                    None => Arc::new(NoInvoiceItems),
                };
            let deps = Arc::new(RunnerDeps {
                store: store.clone(),
                catalog: Arc::new(settings.catalog.clone()),
                provider,
                notifier: Notifier::new(
                    store.clone(),
                    settings.notifications.backoff,
                    settings.notifications.max_attempts,
                ),
                config,
            });
            let now = now.map_or_else(UnixMillis::now, UnixMillis);
            let report = run_period(deps, period(&p)?, now).await?;
            Ok(serde_json::to_string_pretty(&report)?)
        }
    }
}

/// `dynabase calibrate`: computes, stores and prints the calibration.
pub async fn calibrate(
    settings: &Settings,
    period_arg: &str,
    bill_usd: Option<&str>,
) -> Result<String, BillingCliError> {
    let period = period(period_arg)?;
    let bill = bill_usd
        .map(|b| {
            rust_decimal::Decimal::from_str_exact(b)
                .ok()
                .filter(|d| !d.is_sign_negative())
                .ok_or_else(|| {
                    BillingCliError::BadArgument(format!(
                        "--bill-usd: must be a non-negative decimal, got {b}"
                    ))
                })
        })
        .transpose()?;
    let (store, _) = open_store(&settings.store).await?;
    let c = &settings.calibration;
    let source: Arc<dyn UsageSource> = if c.railway_token.is_empty() {
        Arc::new(NoUsageSource)
    } else {
        Arc::new(RailwayUsage::new(
            c.railway_token.clone(),
            &c.railway_project_id,
            c.railway_url.as_deref(),
            c.railway_timeout,
        )?)
    };
    let deps = CalibratorDeps {
        store: store.clone(),
        source,
        config: c.config.clone(),
    };
    let record = compute(&deps, &period, bill, None, UnixMillis::now()).await?;
    store.replace_calibration(&record).await?;
    Ok(serde_json::to_string_pretty(&record)?)
}

/// Runs one `usage` command and returns what to print; a reconciliation
/// that finds differences (and does not repair them) is an error.
pub async fn usage(settings: &Settings, command: UsageCommand) -> Result<String, BillingCliError> {
    let (store, _) = open_store(&settings.store).await?;
    let UsageCommand::Reconcile {
        period: p,
        org,
        repair,
    } = command;
    let period = period(&p)?;
    let orgs: Vec<OrgId> =
        match org {
            Some(id) => vec![OrgId::parse(&id)
                .map_err(|e| BillingCliError::BadArgument(format!("--org: {e}")))?],
            None => store.list_orgs().await?.into_iter().map(|o| o.id).collect(),
        };
    let mut lines = Vec::new();
    let mut differing = 0;
    for org in orgs {
        let records = store.usage_for_period(&org, &period).await?;
        let recomputed = PeriodTotal::of_records(org.clone(), period.clone(), &records);
        let stored = store.period_total(&org, &period).await?;
        let check = Reconciliation {
            org: org.clone(),
            period: period.clone(),
            stored: stored.units,
            recomputed: recomputed.units,
            stored_records: stored.records,
            recomputed_records: recomputed.records,
        };
        if check.matches() {
            lines.push(format!("{org}\tok\t{} records", recomputed.records));
            continue;
        }
        differing += 1;
        lines.push(format!(
            "{org}\tDIFFERS\t{}",
            serde_json::to_string(&check)?
        ));
        if repair {
            store.set_period_total(&recomputed).await?;
            lines.push(format!("{org}\trepaired"));
        }
    }
    if differing > 0 && !repair {
        eprintln!("{}", lines.join("\n"));
        return Err(BillingCliError::Mismatch(differing));
    }
    Ok(lines.join("\n"))
}
