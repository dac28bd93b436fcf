//! Usage routes:
//!
//! - `GET /admin/orgs/{id}/usage?period=YYYY-MM` — an org's usage report;
//! - `POST /admin/orgs/{id}/usage/adjustments` — credit or debit vCPU-hours
//!   with a reason (the record is the audit entry);
//! - `POST /admin/orgs/{id}/api-token` — issue or rotate the org's API token
//!   (shown once, stored hashed);
//! - `GET /v1/usage?period=YYYY-MM` — the customer's own report, with that
//!   token.
//!
//! The report itself is [`UsageReport`], built from the stored records,
//! with a `billing` section beside it: the period's charge as billing
//! computes it (a preview while the period is open), its billing record,
//! the FREE overage state and the spend cap.

use std::str::FromStr;

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use dynabase_actors::domain::compute::Phase;
use dynabase_actors::{
    domain::{
        records::{Period, UsageAdjustment, Write},
        usage_report::{ReportInput, UsageReport},
    },
    tenant::{enforcement::Enforcement, Snapshot},
    usage_accumulator::UsageChanged,
    OrgId, UnixMillis,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    api_token,
    api_types::{EnforcementDoc, PhaseDoc, UsageAdjustmentDoc, UsageReportDoc},
    auth::AdminAuth,
    billing::{billing_view, BillingView},
    error::{ApiError, ErrorBody, FieldError},
    orgs::org_id,
    HttpState,
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeriodQuery {
    /// `YYYY-MM`; absent: the current period.
    #[param(pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$")]
    period: Option<String>,
}

/// The requested period, or the current one.
fn period(raw: Option<&str>, now: UnixMillis) -> Result<Period, ApiError> {
    match raw {
        None => Ok(Period::containing(now)),
        Some(p) => Period::parse(p)
            .map_err(|e| ApiError::InvalidFields(vec![FieldError::new("period", e.to_string())])),
    }
}

/// The usage report and, beside it, what billing makes of the period.
#[derive(Debug, Serialize, ToSchema)]
pub struct Report {
    #[serde(flatten)]
    #[schema(value_type = UsageReportDoc)]
    usage: UsageReport,
    billing: BillingView,
    /// Scale-to-zero: state and cold starts (all time).
    scale_to_zero: ScaleSummary,
    /// What enforcement would have refused while in shadow.
    would_have_refused: WouldHaveRefused,
}

/// The org's scale-to-zero state in the usage report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScaleSummary {
    /// `always_on`, `local` or `command`.
    #[schema(value_type = String)]
    driver: &'static str,
    /// Whether the idle check may stop this database.
    eligible: bool,
    #[schema(value_type = PhaseDoc)]
    state: Phase,
    /// Completed wakes, all time.
    cold_starts: u64,
    /// Driver time of the last completed wake.
    last_wake_ms: Option<u64>,
}

/// Shadow enforcement's counts for the org, from this replica's tenant
/// actor (since it started).
#[derive(Debug, Serialize, ToSchema)]
pub struct WouldHaveRefused {
    #[schema(value_type = EnforcementDoc)]
    enforcement: Enforcement,
    connections: u64,
    query_cycles: u64,
    #[schema(value_type = String)]
    scope: &'static str,
}

/// A newly issued API token.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedToken {
    #[schema(value_type = String)]
    org: OrgId,
    /// `dyn_<org>_<64 hex digits>`; shown once.
    token: String,
    #[schema(value_type = String)]
    note: &'static str,
}

/// A retried adjustment (same `key`): recorded once, not again.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlreadyApplied {
    key: String,
    /// Always `already_applied`.
    #[schema(value_type = String)]
    status: &'static str,
}

async fn would_have_refused(state: &HttpState, org: &OrgId) -> WouldHaveRefused {
    let snapshot = match state.actors.tenants.tenant(org).await {
        Ok(Some(addr)) => addr.send(Snapshot).await.ok(),
        _ => None,
    };
    WouldHaveRefused {
        enforcement: snapshot
            .as_ref()
            .and_then(|s| s.organization.lifecycle.enforcement)
            .unwrap_or_else(|| state.enforcement.get()),
        connections: snapshot
            .as_ref()
            .map_or(0, |s| s.shadow_refused_connections),
        query_cycles: snapshot
            .as_ref()
            .map_or(0, |s| s.shadow_refused_query_cycles),
        scope: "this replica, since its tenant actor started",
    }
}

/// The customer report as JSON (what `/v1/usage` answers; the dashboard
/// renders the same).
pub(super) async fn report_json(
    state: &HttpState,
    org: &OrgId,
    period: Period,
) -> Result<serde_json::Value, ApiError> {
    let report = report(state, org, period).await?;
    serde_json::to_value(report).map_err(|e| {
        tracing::error!(error = %e, "report not serializable");
        ApiError::Unavailable("the report")
    })
}

async fn report(state: &HttpState, org: &OrgId, period: Period) -> Result<Report, ApiError> {
    let organization = state
        .store
        .get_org(org)
        .await?
        .ok_or_else(|| ApiError::org_not_found(org))?;
    let records = state.store.usage_for_period(org, &period).await?;
    let adjustments = state.store.usage_adjustments(org, &period).await?;
    let now = UnixMillis::now();
    let billing = billing_view(state, &organization, &period, &adjustments, now).await?;
    let would_have_refused = would_have_refused(state, org).await;
    Ok(Report {
        would_have_refused,
        usage: UsageReport::build(ReportInput {
            org,
            limits: state.catalog.get(organization.tier),
            period: &period,
            records: &records,
            adjustments,
            now,
        }),
        billing,
        scale_to_zero: ScaleSummary {
            driver: organization.compute.spec.driver_name(),
            eligible: state.scale.eligible(&organization),
            state: organization.compute.state.phase,
            cold_starts: organization.compute.state.cold_starts,
            last_wake_ms: organization.compute.state.last_wake_ms,
        },
    })
}

#[utoipa::path(
    tag = "usage",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme"), PeriodQuery),
    responses(
        (status = 200, description = "The usage report", body = Report),
        (status = 400, description = "Unreadable query string", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 422, description = "Invalid period", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/orgs/{id}/usage")]
pub async fn admin_report(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
    query: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    let org = org_id(&path)?;
    let period = period(query.period.as_deref(), UnixMillis::now())?;
    Ok(HttpResponse::Ok().json(report(&state, &org, period).await?))
}

#[utoipa::path(
    tag = "customer",
    security(("org_token" = [])),
    params(PeriodQuery),
    responses(
        (status = 200, description = "The organization's own usage report", body = Report),
        (status = 400, description = "Unreadable query string", body = ErrorBody),
        (status = 401, description = "No or wrong org API token", body = ErrorBody),
        (status = 422, description = "Invalid period", body = ErrorBody),
        (status = 429, description = "Over the tier's request rate; see Retry-After", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/v1/usage")]
pub async fn customer_report(
    req: HttpRequest,
    state: web::Data<HttpState>,
    query: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    let org = api_token::customer(&req, &state).await?;
    let period = period(query.period.as_deref(), UnixMillis::now())?;
    Ok(HttpResponse::Ok().json(report(&state, &org, period).await?))
}

#[utoipa::path(
    tag = "usage",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    responses(
        (status = 201, description = "The new token (any previous one is revoked)", body = IssuedToken),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[post("/admin/orgs/{id}/api-token")]
pub async fn issue_token(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = org_id(&path)?;
    let token = api_token::generate(&org).map_err(|e| {
        tracing::error!(error = %e, "cannot generate an API token");
        ApiError::Unavailable("the random number generator")
    })?;
    state
        .store
        .set_api_token_hash(&org, &api_token::hash(&token))
        .await?;
    tracing::info!(target: "audit", org = %org, "API token issued (any previous one revoked)");
    Ok(HttpResponse::Created().json(IssuedToken {
        org,
        token,
        note: "shown once; issuing a new token revokes this one",
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustmentBody {
    vcpu_hours: serde_json::Value,
    reason: serde_json::Value,
    period: Option<String>,
    key: Option<String>,
}

fn parse_adjustment(
    body: &[u8],
    org: &OrgId,
    now: UnixMillis,
) -> Result<UsageAdjustment, ApiError> {
    let body: AdjustmentBody =
        serde_json::from_slice(body).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    let mut errors = Vec::new();
    let vcpu_hours = match body.vcpu_hours.as_str().map(Decimal::from_str) {
        Some(Ok(d)) if !d.is_zero() => Some(d),
        _ => {
            errors.push(FieldError::new(
                "vcpu_hours",
                "must be a non-zero decimal string, e.g. \"-1.5\" (credit) or \"2\" (debit)",
            ));
            None
        }
    };
    let reason = match body.reason.as_str().map(str::trim) {
        Some(r) if !r.is_empty() => Some(r.to_owned()),
        _ => {
            errors.push(FieldError::new("reason", "must be a non-empty string"));
            None
        }
    };
    let period = match period(body.period.as_deref(), now) {
        Ok(p) => Some(p),
        Err(_) => {
            errors.push(FieldError::new("period", "must be YYYY-MM"));
            None
        }
    };
    let key = match body.key {
        Some(k) if k.trim().is_empty() || k.len() > 200 => {
            errors.push(FieldError::new("key", "must be 1 to 200 characters"));
            None
        }
        Some(k) => Some(k),
        None => api_token::generate(org).ok().map(|t| api_token::hash(&t)),
    };
    match (vcpu_hours, reason, period, key) {
        (Some(vcpu_hours), Some(reason), Some(period), Some(key)) if errors.is_empty() => {
            Ok(UsageAdjustment {
                key: format!("{org}:{key}"),
                org: org.clone(),
                period,
                vcpu_hours,
                reason,
                by: "admin".to_owned(),
                created_at: now,
            })
        }
        _ => Err(ApiError::InvalidFields(errors)),
    }
}

#[utoipa::path(
    tag = "usage",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    request_body = crate::http::api_types::AdjustmentDoc,
    responses(
        (status = 201, description = "Recorded", body = UsageAdjustmentDoc),
        (status = 200, description = "A retry of a recorded adjustment (same key)", body = AlreadyApplied),
        (status = 400, description = "Body is not a JSON object of known fields", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[post("/admin/orgs/{id}/usage/adjustments")]
pub async fn adjust(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = org_id(&path)?;
    let adjustment = parse_adjustment(&body, &org, UnixMillis::now())?;
    if state.store.get_org(&org).await?.is_none() {
        return Err(ApiError::org_not_found(&org));
    }
    match state.store.add_usage_adjustment(&adjustment).await? {
        Write::Applied => {
            tracing::info!(
                target: "audit",
                org = %org,
                period = %adjustment.period,
                vcpu_hours = %adjustment.vcpu_hours,
                reason = %adjustment.reason,
                by = %adjustment.by,
                "usage adjustment"
            );
            metrics::counter!("dynabase_usage_adjustments_total").increment(1);
            // The new total may cross a warning threshold.
            state.actors.usage.do_send(UsageChanged {
                org: org.clone(),
                period: adjustment.period.clone(),
            });
            Ok(HttpResponse::Created().json(adjustment))
        }
        // A retried request with the same key.
        Write::AlreadyApplied => Ok(HttpResponse::Ok().json(AlreadyApplied {
            key: adjustment.key,
            status: "already_applied",
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjustments_report_every_bad_field() {
        let org = OrgId::parse("acme").unwrap();
        let err = parse_adjustment(
            br#"{"vcpu_hours": 1.5, "reason": " ", "period": "2026-13"}"#,
            &org,
            UnixMillis(0),
        )
        .unwrap_err();
        let ApiError::InvalidFields(fields) = err else {
            panic!("invalid fields expected")
        };
        let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(names, ["vcpu_hours", "reason", "period"]);
        let ok = parse_adjustment(
            br#"{"vcpu_hours": "-2.5", "reason": "outage credit", "key": "t-1"}"#,
            &org,
            UnixMillis(0),
        )
        .unwrap();
        assert_eq!(ok.vcpu_hours, Decimal::from_str("-2.5").unwrap());
        assert_eq!(
            (ok.key.as_str(), ok.period.as_str()),
            ("acme:t-1", "1970-01")
        );
        assert!(matches!(
            parse_adjustment(
                br#"{"vcpu_hours":"1","reason":"x","extra":1}"#,
                &org,
                UnixMillis(0)
            ),
            Err(ApiError::MalformedBody(_))
        ));
    }
}
