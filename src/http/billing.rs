//! Billing routes:
//!
//! - `GET /admin/billing/preview?period=YYYY-MM`: what the billing job would
//!   charge each org for the period, computed now, nothing written;
//! - `POST /admin/billing/run?period=YYYY-MM[&now=<unix ms>]`: bill a closed
//!   period now (409 while it is open; `now` in the future only with
//!   `lifecycle.allow_clock_override`);
//! - `GET /admin/orgs/{id}/billing`: the org's billing records;
//! - `PUT /admin/orgs/{id}/spend-cap` and, with the org's API token,
//!   `PUT /v1/spend-cap`: `{"amount":"25.00","action":"refuse"|"throttle"}`
//!   sets the monthly cap on overage cost, `{"amount":null}` removes it.

use std::str::FromStr;

use actix_web::{get, post, put, web, HttpRequest, HttpResponse};
use dynabase_actors::{
    billing::{
        charge::{compute, Charge, ChargeInput, SkipReason},
        current_mode,
        runner::{BillingJobError, Preview, RunPeriod},
        BillingMode, MODE_SETTING,
    },
    domain::{
        billing_record::BillingState,
        records::{Period, UsageAdjustment},
        spend::{CapAction, FreeOverageStatus, SpendCap},
    },
    tenant::enforcement::{Enforcement, ENFORCEMENT_SETTING},
    usage_accumulator::UsageChanged,
    OrgId, Organization, Tier, UnixMillis,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    api_token,
    auth::AdminAuth,
    error::{ApiError, FieldError},
    orgs::{existing_org, org_id},
    HttpState,
};

/// Spend-cap writes retried when the org changes under them.
const CAS_ATTEMPTS: usize = 3;

#[derive(Debug, Deserialize)]
pub struct RunQuery {
    period: Option<String>,
    now: Option<i64>,
}

fn required_period(raw: Option<&str>) -> Result<Period, ApiError> {
    let raw = raw.ok_or_else(|| {
        ApiError::InvalidFields(vec![FieldError::new("period", "is required (YYYY-MM)")])
    })?;
    Period::parse(raw)
        .map_err(|e| ApiError::InvalidFields(vec![FieldError::new("period", e.to_string())]))
}

impl From<BillingJobError> for ApiError {
    fn from(e: BillingJobError) -> Self {
        match e {
            BillingJobError::Store(e) => e.into(),
            e @ BillingJobError::NotClosed { .. } => ApiError::Conflict(e.to_string()),
        }
    }
}

#[get("/admin/billing/preview")]
pub async fn preview(
    _: AdminAuth,
    state: web::Data<HttpState>,
    query: web::Query<RunQuery>,
) -> Result<HttpResponse, ApiError> {
    let period = required_period(query.period.as_deref())?;
    let plan = state
        .actors
        .billing
        .send(Preview { period })
        .await
        .map_err(|_| ApiError::Unavailable("the billing job"))??;
    let total = plan.total_amount();
    let mode = current_mode(state.store.as_ref(), &state.billing).await?;
    Ok(HttpResponse::Ok().json(json!({
        "period": plan.period,
        "mode": mode,
        "note": (mode == BillingMode::Shadow).then_some(
            "billing is in shadow mode: a run records these charges and sends nothing to Stripe"),
        "orgs": plan.charges.len(),
        "total_amount": total,
        "currency": state.billing.currency,
        "charges": plan.charges,
    })))
}

#[post("/admin/billing/run")]
pub async fn run(
    _: AdminAuth,
    state: web::Data<HttpState>,
    query: web::Query<RunQuery>,
) -> Result<HttpResponse, ApiError> {
    let period = required_period(query.period.as_deref())?;
    let now = state.lifecycle.now(query.now.map(UnixMillis))?;
    let report = state
        .actors
        .billing
        .send(RunPeriod { period, now })
        .await
        .map_err(|_| ApiError::Unavailable("the billing job"))??;
    Ok(HttpResponse::Ok().json(report))
}

#[get("/admin/orgs/{id}/billing")]
pub async fn org_records(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = existing_org(&state, &path).await?;
    let records = state.store.billing_records_for_org(&org).await?;
    Ok(HttpResponse::Ok().json(json!({ "org": org, "records": records })))
}

/// `GET /admin/modes`: the run-time switches in force.
#[get("/admin/modes")]
pub async fn modes(_: AdminAuth, state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    let billing = current_mode(state.store.as_ref(), &state.billing).await?;
    Ok(HttpResponse::Ok().json(json!({
        "billing": billing,
        "enforcement": state.enforcement.get(),
    })))
}

/// `PUT /admin/modes` `{"billing":"live"|"shadow",
/// "enforcement":"enforce"|"shadow"}` (either or both): every replica
/// follows without a restart — the next billing run, and live sessions'
/// next connection or query cycle.
#[put("/admin/modes")]
pub async fn set_modes(
    _: AdminAuth,
    state: web::Data<HttpState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(ApiError::MalformedBody("expected a JSON object".into()));
    };
    let mut errors: Vec<FieldError> = map
        .keys()
        .filter(|k| !["billing", "enforcement"].contains(&k.as_str()))
        .map(|k| FieldError::new(k, "unknown field"))
        .collect();
    let billing = map
        .get("billing")
        .map(|v| v.as_str().and_then(BillingMode::parse));
    if let Some(None) = billing {
        errors.push(FieldError::new("billing", "must be \"live\" or \"shadow\""));
    }
    let enforcement = map
        .get("enforcement")
        .map(|v| v.as_str().and_then(Enforcement::parse));
    if let Some(None) = enforcement {
        errors.push(FieldError::new(
            "enforcement",
            "must be \"enforce\" or \"shadow\"",
        ));
    }
    if billing.is_none() && enforcement.is_none() {
        errors.push(FieldError::new(
            "billing",
            "give billing, enforcement or both",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::InvalidFields(errors));
    }
    if let Some(Some(mode)) = billing {
        state.store.set_setting(MODE_SETTING, mode.as_str()).await?;
        tracing::info!(target: "audit", mode = mode.as_str(), "billing mode set");
    }
    if let Some(Some(mode)) = enforcement {
        state
            .store
            .set_setting(ENFORCEMENT_SETTING, mode.as_str())
            .await?;
        state.enforcement.set(mode);
        tracing::info!(target: "audit", mode = mode.as_str(), "limits enforcement set");
    }
    Ok(HttpResponse::Ok().json(json!({
        "billing": current_mode(state.store.as_ref(), &state.billing).await?,
        "enforcement": state.enforcement.get(),
    })))
}

/// What billing makes of one org's period, for the usage report.
#[derive(Debug, Serialize)]
pub(super) struct BillingView {
    /// The charge as the billing job computes it (for an open period: on
    /// the usage so far).
    charge: Charge,
    /// The period's billing record, once the job has run.
    record: Option<RecordView>,
    free_overage: FreeOverageStatus,
    spend_cap: Option<SpendCap>,
    spend_cap_reached: bool,
    upgrade_url: String,
}

#[derive(Debug, Serialize)]
struct RecordView {
    state: BillingState,
    amount: Decimal,
    skip: Option<SkipReason>,
    provider_item_id: Option<String>,
    provider_invoice_id: Option<String>,
}

pub(super) async fn billing_view(
    state: &HttpState,
    org: &Organization,
    period: &Period,
    adjustments: &[UsageAdjustment],
    now: UnixMillis,
) -> Result<BillingView, ApiError> {
    let total = state.store.period_total(&org.id, period).await?;
    let changes = state.store.tier_history(&org.id).await?;
    let record = state.store.billing_record(&org.id, period).await?;
    let charge = compute(&ChargeInput {
        period,
        catalog: &state.catalog,
        current_tier: org.tier,
        changes: &changes,
        total: &total,
        adjustments,
        spend_cap: org.lifecycle.spend_cap.as_ref().map(|c| c.amount),
        currency: &state.billing.currency,
    });
    Ok(BillingView {
        charge,
        record: record.map(|r| RecordView {
            state: r.state,
            amount: r.charge.amount,
            skip: r.skip,
            provider_item_id: r.provider_item_id,
            provider_invoice_id: r.provider_invoice_id,
        }),
        free_overage: if org.tier == Tier::Free {
            FreeOverageStatus::of(org.lifecycle.free_overage.as_ref(), now)
        } else {
            FreeOverageStatus::WithinIncluded
        },
        spend_cap: org.lifecycle.spend_cap.clone(),
        spend_cap_reached: org
            .lifecycle
            .cap_reached
            .as_ref()
            .is_some_and(|r| &r.period == period),
        upgrade_url: state.billing.upgrade_url.clone(),
    })
}

/// The body of a spend-cap request: `None` removes the cap.
fn parse_cap(body: &[u8], set_by: &str) -> Result<Option<SpendCap>, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(ApiError::MalformedBody("expected a JSON object".into()));
    };
    let mut errors: Vec<FieldError> = map
        .keys()
        .filter(|k| !["amount", "action"].contains(&k.as_str()))
        .map(|k| FieldError::new(k, "unknown field"))
        .collect();
    let amount = match map.get("amount") {
        Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => match Decimal::from_str(s) {
            Ok(d) if d > Decimal::ZERO && d.scale() <= 2 => Some(d),
            _ => None,
        },
        _ => None,
    };
    if amount.is_none() {
        errors.push(FieldError::new(
            "amount",
            "must be a positive decimal string with at most two decimals, e.g. \"25.00\", or null to remove the cap",
        ));
    }
    let action = match map.get("action").and_then(Value::as_str) {
        None => Some(CapAction::Refuse),
        Some("refuse") => Some(CapAction::Refuse),
        Some("throttle") => Some(CapAction::Throttle),
        Some(_) => {
            errors.push(FieldError::new(
                "action",
                "must be \"refuse\" or \"throttle\"",
            ));
            None
        }
    };
    match (amount, action) {
        (Some(amount), Some(action)) if errors.is_empty() => Ok(Some(SpendCap {
            amount,
            action,
            set_by: set_by.to_owned(),
        })),
        _ => Err(ApiError::InvalidFields(errors)),
    }
}

/// Writes the cap (compare-and-set) and clears "reached": the next usage
/// check decides again against the new cap.
async fn set_cap(
    state: &HttpState,
    org: &OrgId,
    cap: Option<SpendCap>,
) -> Result<Organization, ApiError> {
    for _ in 0..CAS_ATTEMPTS {
        let mut current = state
            .store
            .get_org(org)
            .await?
            .ok_or_else(|| ApiError::org_not_found(org))?;
        let seen = current.updated_at;
        current.lifecycle.spend_cap = cap.clone();
        current.lifecycle.cap_reached = None;
        current.updated_at = UnixMillis(UnixMillis::now().0.max(seen.0 + 1));
        if state.store.update_org_if_unchanged(&current, seen).await? {
            tracing::info!(target: "audit", org = %org, cap = ?cap, "spend cap set");
            if let Err(e) = state.actors.tenants.publish_change(current.clone()).await {
                tracing::warn!(org = %org, error = %e, "change announcement failed; retried in the background");
            }
            state.actors.usage.do_send(UsageChanged {
                org: org.clone(),
                period: Period::containing(UnixMillis::now()),
            });
            return Ok(current);
        }
    }
    Err(ApiError::Conflict(format!(
        "organization `{org}` is being changed concurrently; try again"
    )))
}

fn cap_view(org: &Organization) -> Value {
    json!({
        "org": org.id,
        "spend_cap": org.lifecycle.spend_cap,
        "cap_reached": org.lifecycle.cap_reached,
    })
}

#[put("/admin/orgs/{id}/spend-cap")]
pub async fn admin_set_cap(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = org_id(&path)?;
    let cap = parse_cap(&body, "admin")?;
    let updated = set_cap(&state, &org, cap).await?;
    Ok(HttpResponse::Ok().json(cap_view(&updated)))
}

#[put("/v1/spend-cap")]
pub async fn customer_set_cap(
    req: HttpRequest,
    state: web::Data<HttpState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = api_token::customer(&req, &state).await?;
    let cap = parse_cap(&body, "customer")?;
    let updated = set_cap(&state, &org, cap).await?;
    Ok(HttpResponse::Ok().json(cap_view(&updated)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_positive_cents_with_a_known_action() {
        let cap = parse_cap(br#"{"amount":"25.50","action":"throttle"}"#, "admin")
            .unwrap()
            .unwrap();
        assert_eq!(cap.amount, Decimal::from_str("25.50").unwrap());
        assert_eq!(cap.action, CapAction::Throttle);
        assert_eq!(parse_cap(br#"{"amount":null}"#, "admin").unwrap(), None);
        let Err(ApiError::InvalidFields(fields)) =
            parse_cap(br#"{"amount":"0.001","action":"stop","x":1}"#, "admin")
        else {
            panic!("invalid fields expected");
        };
        let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(names, ["x", "amount", "action"]);
        assert!(matches!(
            parse_cap(b"[1]", "admin"),
            Err(ApiError::MalformedBody(_))
        ));
    }
}
