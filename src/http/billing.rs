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
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{
    api_token,
    api_types::{
        BillingModeDoc, BillingRecordDoc, CapReachedDoc, ChargeDoc, EnforcementDoc, RunReportDoc,
        SpendCapDoc, SpendCapRequestDoc,
    },
    auth::AdminAuth,
    error::{ApiError, ErrorBody, FieldError},
    json_object,
    orgs::{existing_org, org_id},
    HttpState,
};

/// Spend-cap writes retried when the org changes under them.
const CAS_ATTEMPTS: usize = 3;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// `YYYY-MM` (required).
    #[param(required = true, pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$")]
    period: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// `YYYY-MM` (required): a closed period.
    #[param(required = true, pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$")]
    period: Option<String>,
    /// Unix milliseconds to bill at; in the future only with
    /// `lifecycle.allow_clock_override`.
    #[serde(default, deserialize_with = "super::millis::optional_millis_query")]
    #[param(value_type = Option<i64>)]
    now: Option<i64>,
}

/// What the billing job would charge, computed now.
#[derive(Serialize, ToSchema)]
pub struct BillingPreview {
    #[schema(value_type = String)]
    period: Period,
    #[schema(value_type = BillingModeDoc)]
    mode: BillingMode,
    /// Set in shadow mode.
    #[schema(value_type = Option<String>)]
    note: Option<&'static str>,
    /// How many orgs have a charge.
    orgs: usize,
    /// Decimal string: Σ of the charges that would be pushed.
    #[schema(value_type = String)]
    total_amount: Decimal,
    currency: String,
    /// Per org: `org`, `customer_id`, `subscription_id`, `charge`, `skip`.
    #[schema(value_type = Vec<Object>)]
    charges: Vec<dynabase_actors::billing::plan::OrgCharge>,
}

/// An organization's billing records.
#[derive(Serialize, ToSchema)]
pub struct OrgBillingRecords {
    #[schema(value_type = String)]
    org: OrgId,
    #[schema(value_type = Vec<BillingRecordDoc>)]
    records: Vec<dynabase_actors::domain::billing_record::BillingRecord>,
}

/// The run-time switches in force.
#[derive(Serialize, ToSchema)]
pub struct Modes {
    #[schema(value_type = BillingModeDoc)]
    billing: BillingMode,
    #[schema(value_type = EnforcementDoc)]
    enforcement: Enforcement,
}

/// An organization's spend cap after a change.
#[derive(Serialize, ToSchema)]
pub struct CapView {
    #[schema(value_type = String)]
    org: OrgId,
    #[schema(value_type = Option<SpendCapDoc>)]
    spend_cap: Option<SpendCap>,
    #[schema(value_type = Option<CapReachedDoc>)]
    cap_reached: Option<dynabase_actors::domain::spend::CapReached>,
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

#[utoipa::path(
    tag = "billing",
    security(("admin_token" = [])),
    params(PreviewQuery),
    responses(
        (status = 200, description = "Every org's charge for the period; nothing written", body = BillingPreview),
        (status = 400, description = "Unreadable query string", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 422, description = "Missing or invalid period", body = ErrorBody),
        (status = 503, description = "Store or billing job unavailable", body = ErrorBody),
    )
)]
#[get("/admin/billing/preview")]
pub async fn preview(
    _: AdminAuth,
    state: web::Data<HttpState>,
    query: web::Query<PreviewQuery>,
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
    Ok(HttpResponse::Ok().json(BillingPreview {
        period: plan.period,
        mode,
        note: (mode == BillingMode::Shadow).then_some(
            "billing is in shadow mode: a run records these charges and sends nothing to Stripe",
        ),
        orgs: plan.charges.len(),
        total_amount: total,
        currency: state.billing.currency.clone(),
        charges: plan.charges,
    }))
}

#[utoipa::path(
    tag = "billing",
    security(("admin_token" = [])),
    params(RunQuery),
    responses(
        (status = 200, description = "What the run did", body = RunReportDoc),
        (status = 400, description = "Unreadable query string", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 409, description = "The period is not closed yet", body = ErrorBody),
        (status = 422, description = "Missing or invalid period, or `now` in the future", body = ErrorBody),
        (status = 503, description = "Store or billing job unavailable", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    tag = "billing",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    responses(
        (status = 200, description = "The org's billing records", body = OrgBillingRecords),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/orgs/{id}/billing")]
pub async fn org_records(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = existing_org(&state, &path).await?;
    let records = state.store.billing_records_for_org(&org).await?;
    Ok(HttpResponse::Ok().json(OrgBillingRecords { org, records }))
}

/// `GET /admin/modes`: the run-time switches in force.
#[utoipa::path(
    tag = "billing",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The switches in force", body = Modes),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/modes")]
pub async fn modes(_: AdminAuth, state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    let billing = current_mode(state.store.as_ref(), &state.billing).await?;
    Ok(HttpResponse::Ok().json(Modes {
        billing,
        enforcement: state.enforcement.get(),
    }))
}

/// `PUT /admin/modes` `{"billing":"live"|"shadow",
/// "enforcement":"enforce"|"shadow"}` (either or both): every replica
/// follows without a restart — the next billing run, and live sessions'
/// next connection or query cycle.
#[utoipa::path(
    tag = "billing",
    security(("admin_token" = [])),
    request_body = crate::http::api_types::ModesRequestDoc,
    responses(
        (status = 200, description = "The switches now in force", body = Modes),
        (status = 400, description = "Body is not a JSON object", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[put("/admin/modes")]
pub async fn set_modes(
    _: AdminAuth,
    state: web::Data<HttpState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (map, mut errors) = json_object::parse(&body, &["billing", "enforcement"])?;
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
    Ok(HttpResponse::Ok().json(Modes {
        billing: current_mode(state.store.as_ref(), &state.billing).await?,
        enforcement: state.enforcement.get(),
    }))
}

/// What billing makes of one org's period, for the usage report.
#[derive(Debug, Serialize, ToSchema)]
pub struct BillingView {
    /// The charge as the billing job computes it (for an open period: on
    /// the usage so far).
    #[schema(value_type = ChargeDoc)]
    charge: Charge,
    /// The period's billing record, once the job has run.
    record: Option<RecordView>,
    /// FREE's overage policy: `{"state": …}` and the times that go with it.
    #[schema(value_type = Object)]
    free_overage: FreeOverageStatus,
    #[schema(value_type = Option<SpendCapDoc>)]
    spend_cap: Option<SpendCap>,
    spend_cap_reached: bool,
    upgrade_url: String,
}

/// The period's billing record, as the usage report shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordView {
    /// `computed`, `pushed`, `confirmed`, `skipped` or `failed`.
    #[schema(value_type = String)]
    state: BillingState,
    /// Decimal string.
    #[schema(value_type = String)]
    amount: Decimal,
    /// Why nothing is charged, when so.
    #[schema(value_type = Option<String>)]
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
    let (map, mut errors) = json_object::parse(body, &["amount", "action"])?;
    // `Some(None)`: remove the cap; checked with the other fields, so an
    // unknown field or a bad action is reported even then.
    let amount = match map.get("amount") {
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => match Decimal::from_str(s) {
            Ok(d) if d > Decimal::ZERO && d.scale() <= 2 => Some(Some(d)),
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
    let action = match map.get("action") {
        None => Some(CapAction::Refuse),
        Some(Value::String(s)) if s == "refuse" => Some(CapAction::Refuse),
        Some(Value::String(s)) if s == "throttle" => Some(CapAction::Throttle),
        // Anything else (another string, an object, null) is refused rather
        // than read as the default.
        Some(_) => {
            errors.push(FieldError::new(
                "action",
                "must be \"refuse\" or \"throttle\"",
            ));
            None
        }
    };
    match (amount, action) {
        (Some(None), Some(_)) if errors.is_empty() => Ok(None),
        (Some(Some(amount)), Some(action)) if errors.is_empty() => Ok(Some(SpendCap {
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

fn cap_view(org: &Organization) -> CapView {
    CapView {
        org: org.id.clone(),
        spend_cap: org.lifecycle.spend_cap.clone(),
        cap_reached: org.lifecycle.cap_reached.clone(),
    }
}

#[utoipa::path(
    tag = "billing",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    request_body = SpendCapRequestDoc,
    responses(
        (status = 200, description = "The cap in force", body = CapView),
        (status = 400, description = "Body is not a JSON object", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 409, description = "Changed concurrently; try again", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    tag = "customer",
    security(("org_token" = [])),
    request_body = SpendCapRequestDoc,
    responses(
        (status = 200, description = "The cap in force", body = CapView),
        (status = 400, description = "Body is not a JSON object", body = ErrorBody),
        (status = 401, description = "No or wrong org API token", body = ErrorBody),
        (status = 409, description = "Changed concurrently; try again", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 429, description = "Over the tier's request rate; see Retry-After", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
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
        assert!(matches!(
            parse_cap(br#"{"amount":null,"colour":1}"#, "admin"),
            Err(ApiError::InvalidFields(_))
        ));
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

    #[test]
    fn an_action_that_is_not_a_string_is_refused_not_defaulted() {
        for body in [
            br#"{"amount":"25.00","action":{}}"#.as_slice(),
            br#"{"amount":"25.00","action":null}"#,
            br#"{"amount":"25.00","action":1}"#,
            br#"{"amount":null,"action":"stop"}"#,
        ] {
            let Err(ApiError::InvalidFields(fields)) = parse_cap(body, "admin") else {
                panic!(
                    "invalid fields expected for {}",
                    String::from_utf8_lossy(body)
                );
            };
            assert_eq!(fields[0].field, "action");
        }
    }
}
