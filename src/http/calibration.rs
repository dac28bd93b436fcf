//! Calibration and margin routes:
//!
//! - `POST /admin/calibrations`: `{"period":"2026-11","bill_usd":"48.60",
//!   "vcpu_minutes":"90000"}` — the manual path (an operator's bill; the
//!   vCPU-minutes are optional), or `{"period":"2026-11"}` to read Railway's
//!   API now; the result replaces the period's calibration;
//! - `GET /admin/calibrations`, `GET /admin/calibrations/{period}`;
//! - `GET /admin/reports/margin?period=YYYY-MM`: revenue against cost per
//!   tier, at the period's calibrated rate (or Railway's list price).

use std::{collections::HashMap, str::FromStr};

use actix_web::{get, post, web, HttpResponse};
use dynabase_actors::{
    calibration::margin::margins, calibrator::Calibrate, domain::records::Period, UnixMillis,
};
use rust_decimal::Decimal;
use serde_json::Value;

use super::{
    api_types::{CalibrateDoc, CalibrationDoc, MarginReportDoc},
    auth::AdminAuth,
    error::{ApiError, ErrorBody, FieldError},
    json_object, HttpState,
};

fn period_field(raw: Option<&str>) -> Result<Period, FieldError> {
    let raw = raw.ok_or_else(|| FieldError::new("period", "is required (YYYY-MM)"))?;
    Period::parse(raw).map_err(|e| FieldError::new("period", e.to_string()))
}

fn decimal_field(
    map: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<Decimal>, FieldError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match Decimal::from_str(s) {
            Ok(d) if d >= Decimal::ZERO => Ok(Some(d)),
            _ => Err(FieldError::new(
                key,
                "must be a non-negative decimal string",
            )),
        },
        Some(_) => Err(FieldError::new(
            key,
            "must be a decimal string, e.g. \"48.60\"",
        )),
    }
}

#[utoipa::path(
    tag = "calibration",
    security(("admin_token" = [])),
    request_body = CalibrateDoc,
    responses(
        (status = 201, description = "The period's calibration (replaces any earlier one)", body = CalibrationDoc),
        (status = 400, description = "Body is not a JSON object", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 503, description = "Store or calibrator unavailable", body = ErrorBody),
    )
)]
#[post("/admin/calibrations")]
pub async fn calibrate(
    _: AdminAuth,
    state: web::Data<HttpState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (map, mut errors) = json_object::parse(&body, &["period", "bill_usd", "vcpu_minutes"])?;
    let period = period_field(map.get("period").and_then(Value::as_str))
        .map_err(|e| errors.push(e))
        .ok();
    let bill = decimal_field(&map, "bill_usd")
        .map_err(|e| errors.push(e))
        .ok();
    let minutes = decimal_field(&map, "vcpu_minutes")
        .map_err(|e| errors.push(e))
        .ok();
    let (Some(period), Some(bill), Some(minutes)) = (period, bill, minutes) else {
        return Err(ApiError::InvalidFields(errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::InvalidFields(errors));
    }
    if minutes.is_some() && bill.is_none() {
        return Err(ApiError::InvalidFields(vec![FieldError::new(
            "vcpu_minutes",
            "goes with bill_usd (the manual path)",
        )]));
    }
    let record = state
        .actors
        .calibrator
        .send(Calibrate {
            period,
            manual_bill: bill,
            manual_vcpu_minutes: minutes,
            now: UnixMillis::now(),
        })
        .await
        .map_err(|_| ApiError::Unavailable("the calibrator"))??;
    Ok(HttpResponse::Created().json(record))
}

#[utoipa::path(
    operation_id = "list_calibrations",
    tag = "calibration",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every calibration", body = Vec<CalibrationDoc>),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/calibrations")]
pub async fn list(_: AdminAuth, state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.calibrations().await?))
}

#[utoipa::path(
    operation_id = "show_calibration",
    tag = "calibration",
    security(("admin_token" = [])),
    params(("period" = String, Path, description = "`YYYY-MM`", pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$")),
    responses(
        (status = 200, description = "The period's calibration", body = CalibrationDoc),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No calibration for the period", body = ErrorBody),
        (status = 422, description = "Invalid period", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/calibrations/{period}")]
pub async fn show(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let period = Period::parse(&path)
        .map_err(|e| ApiError::InvalidFields(vec![FieldError::new("period", e.to_string())]))?;
    let found = state
        .store
        .calibrations()
        .await?
        .into_iter()
        .find(|c| c.period == period)
        .ok_or_else(|| ApiError::NotFound(format!("no calibration for {period}")))?;
    Ok(HttpResponse::Ok().json(found))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeriodQuery {
    /// `YYYY-MM` (required).
    #[param(required = true, pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$")]
    period: Option<String>,
}

#[utoipa::path(
    tag = "calibration",
    security(("admin_token" = [])),
    params(PeriodQuery),
    responses(
        (status = 200, description = "Revenue against cost per tier", body = MarginReportDoc),
        (status = 400, description = "Unreadable query string", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 422, description = "Missing or invalid period", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/reports/margin")]
pub async fn margin(
    _: AdminAuth,
    state: web::Data<HttpState>,
    query: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    let period =
        period_field(query.period.as_deref()).map_err(|e| ApiError::InvalidFields(vec![e]))?;
    let orgs = state.store.list_orgs().await?;
    let totals: HashMap<_, _> = state
        .store
        .period_totals(&period)
        .await?
        .into_iter()
        .map(|t| (t.org.clone(), t.vcpu_hours()))
        .collect();
    let records = state.store.billing_records_for_period(&period).await?;
    let calibrated = state
        .store
        .calibrations()
        .await?
        .into_iter()
        .find(|c| c.period == period)
        .and_then(|c| c.actual_rate);
    let rate = match calibrated {
        Some(r) => (r, "calibrated"),
        None => (
            state.calibration.vcpu_minute_price * Decimal::from(60),
            "railway_list_price",
        ),
    };
    let rows: Vec<_> = orgs
        .into_iter()
        .filter(|o| o.created_at < period.end())
        .map(|o| {
            let hours = totals.get(&o.id).copied().unwrap_or(Decimal::ZERO);
            (o.id, o.tier, hours)
        })
        .collect();
    Ok(HttpResponse::Ok().json(margins(&period, &state.catalog, &rows, &records, rate)))
}
