//! `Calibrator`: compares each month's estimated usage with what Railway
//! measured and billed (spec "Monthly Calibration"), on a schedule after
//! the period closes and on demand, and stores the result.
//!
//! - [`CalibrationTick`]: the last closed period, unless calibrated (a
//!   calibration that could not read Railway is tried again next tick);
//! - [`Calibrate`]: one period now — with `manual_bill`, the operator's
//!   bill replaces Railway's figures (spec "No API → manual calibration").
//!
//! An alert (variance above the threshold, or Railway unreadable) is a
//! flag on the record, the `dynabase_calibration_alert` gauge and an error
//! log line; the usage factors are never changed (Q4).

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix::{Handler, Message, ResponseFuture};
use rust_decimal::{prelude::ToPrimitive, Decimal};

use crate::{
    calibration::{
        compute::{calibrate, CalibrationInput},
        source::{Measured, UsageSource},
        CalibrationConfig,
    },
    domain::{
        period_total::PeriodTotal,
        records::{CalibrationRecord, Period, Write},
        time::UnixMillis,
    },
    store::{Store, StoreError},
};

/// Calibrate one period now.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<CalibrationRecord, StoreError>")]
pub struct Calibrate {
    pub period: Period,
    /// The bill an operator entered (USD).
    pub manual_bill: Option<Decimal>,
    /// With a manual bill: the vCPU-minutes Railway's bill shows, if known.
    pub manual_vcpu_minutes: Option<Decimal>,
    pub now: UnixMillis,
}

/// The schedule: the last closed period, if not calibrated yet.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Option<CalibrationRecord>, StoreError>")]
pub struct CalibrationTick {
    pub now: UnixMillis,
}

pub struct CalibratorDeps {
    pub store: Arc<dyn Store>,
    pub source: Arc<dyn UsageSource>,
    pub config: CalibrationConfig,
}

/// The calibrator actor.
pub struct Calibrator {
    restarts: u32,
    deps: Arc<CalibratorDeps>,
}

impl Calibrator {
    pub fn new(deps: Arc<CalibratorDeps>) -> Self {
        Self { restarts: 0, deps }
    }
}

crate::supervised_actor!(Calibrator, "calibrator");

/// Computes and returns the calibration of `period` (not stored).
pub async fn compute(
    deps: &CalibratorDeps,
    period: &Period,
    manual_bill: Option<Decimal>,
    manual_vcpu_minutes: Option<Decimal>,
    now: UnixMillis,
) -> Result<CalibrationRecord, StoreError> {
    let orgs = deps.store.list_orgs().await?;
    let totals: HashMap<_, PeriodTotal> = deps
        .store
        .period_totals(period)
        .await?
        .into_iter()
        .map(|t| (t.org.clone(), t))
        .collect();
    let estimates: Vec<_> = orgs
        .into_iter()
        .filter(|o| o.created_at < period.end())
        .map(|o| {
            let (vcpu, gb) = totals
                .get(&o.id)
                .map_or((Decimal::ZERO, Decimal::ZERO), |t| {
                    (t.vcpu_hours(), t.gb_hours())
                });
            (o.id, o.tier, vcpu, gb, o.lifecycle.railway_service_id)
        })
        .collect();
    let (measured, source, error) = match manual_bill {
        Some(_) => (
            manual_vcpu_minutes.map(|m| Measured {
                vcpu_minutes: m,
                ..Measured::default()
            }),
            "manual",
            None,
        ),
        None => match deps.source.measured(period).await {
            Ok(m) => (Some(m), "railway_api", None),
            Err(e) => (None, "railway_api", Some(e.to_string())),
        },
    };
    Ok(calibrate(&CalibrationInput {
        period,
        config: &deps.config,
        estimates: &estimates,
        measured: measured.as_ref(),
        manual_bill,
        source,
        error,
        now,
    }))
}

fn publish(record: &CalibrationRecord) {
    let f = |d: Option<Decimal>| d.and_then(|d| d.to_f64()).unwrap_or(f64::NAN);
    metrics::gauge!("dynabase_calibration_variance").set(f(record.variance));
    metrics::gauge!("dynabase_calibration_actual_rate").set(f(record.actual_rate));
    metrics::gauge!("dynabase_calibration_alert").set(if record.alert { 1.0 } else { 0.0 });
    metrics::counter!("dynabase_calibrations_total", "source" => record.source.clone(),
        "alert" => record.alert.to_string())
    .increment(1);
    if record.alert {
        tracing::error!(
            target: "alert",
            period = %record.period,
            variance = ?record.variance,
            note = ?record.note,
            "calibration alert: estimates and Railway's bill disagree, or the bill could not be read"
        );
    }
}

impl Handler<Calibrate> for Calibrator {
    type Result = ResponseFuture<Result<CalibrationRecord, StoreError>>;

    fn handle(&mut self, msg: Calibrate, _: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(async move {
            let record = compute(
                &deps,
                &msg.period,
                msg.manual_bill,
                msg.manual_vcpu_minutes,
                msg.now,
            )
            .await?;
            deps.store.replace_calibration(&record).await?;
            publish(&record);
            Ok(record)
        })
    }
}

impl Handler<CalibrationTick> for Calibrator {
    type Result = ResponseFuture<Result<Option<CalibrationRecord>, StoreError>>;

    fn handle(&mut self, msg: CalibrationTick, _: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(async move {
            let settled = msg.now.minus(deps.config.settle_delay);
            let period = Period::containing(
                Period::containing(settled)
                    .start()
                    .minus(Duration::from_millis(1)),
            );
            let existing = deps
                .store
                .calibrations()
                .await?
                .into_iter()
                .find(|c| c.period == period);
            // Done, unless it could not read Railway (and nobody entered a bill).
            if existing
                .as_ref()
                .is_some_and(|c| c.source == "manual" || c.railway_bill.is_some())
            {
                return Ok(None);
            }
            let record = compute(&deps, &period, None, None, msg.now).await?;
            let written = match existing {
                None => deps.store.record_calibration(&record).await?,
                Some(_) => {
                    deps.store.replace_calibration(&record).await?;
                    Write::Applied
                }
            };
            if written == Write::Applied {
                publish(&record);
            }
            Ok(Some(record))
        })
    }
}
