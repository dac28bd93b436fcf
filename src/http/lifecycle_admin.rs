//! Admin routes of the tier lifecycle:
//!
//! - `PUT /admin/orgs/{id}/tier` `{"tier":"pro","reason":"…"}`: a manual
//!   change, applied at once in either direction, audited;
//! - `GET /admin/orgs/{id}/tier-history`: the audit log, oldest first;
//! - `GET /admin/orgs/{id}/notifications`: what the organization was told;
//! - `PUT /admin/orgs/{id}/notification-url` `{"url":"https://…"|null}`;
//! - `GET /admin/stripe/events/{event_id}`: how a Stripe event was handled;
//! - `POST /admin/lifecycle/tick` `{"now": <unix ms>}` (optional body): runs
//!   the lifecycle scheduler now, or — with `lifecycle.allow_clock_override`
//!   — at a time in the future (tests; never in production).

use actix_web::{get, post, put, web, HttpResponse};
use dynabase_actors::{
    lifecycle::{ChangeError, ChangeRequest, Mode, Tick},
    webhook_handler::job_id,
    OrgId, Organization, Tier, UnixMillis,
};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{
    api_types::{
        LifecycleTickDoc, NotificationDoc, NotificationUrlDoc, OrganizationDoc, SetTierDoc,
        TickDoc, TierChangeDoc,
    },
    auth::AdminAuth,
    error::{ApiError, ErrorBody, FieldError},
    json_object,
    orgs::{existing_org, org_id},
    HttpState,
};

/// How a Stripe event was handled.
#[derive(Serialize, ToSchema)]
pub struct StripeEventView {
    id: String,
    /// `pending`, `done`, `ignored` or `dead`.
    #[schema(value_type = String)]
    status: dynabase_actors::domain::jobs::JobStatus,
    note: Option<String>,
    attempts: u32,
    /// Unix milliseconds.
    #[schema(value_type = i64)]
    received_at: UnixMillis,
    #[schema(value_type = i64)]
    updated_at: UnixMillis,
    #[schema(value_type = i64)]
    next_attempt_at: UnixMillis,
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::NotFound(id) => ApiError::org_not_found(id),
            ChangeError::Contended(id) => ApiError::Conflict(format!(
                "organization `{id}` is being changed concurrently; try again"
            )),
            ChangeError::Store(e) => e.into(),
            ChangeError::Notify(e) => {
                tracing::error!(error = %e, "notification could not be recorded");
                ApiError::Unavailable("the store")
            }
        }
    }
}

/// A JSON object body with only `allowed` keys; an empty body or `null` is
/// `{}` (optional bodies such as a tick's accept it).
fn object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let (map, unknown) = json_object::parse_optional(body, allowed)?;
    if unknown.is_empty() {
        Ok(map)
    } else {
        Err(ApiError::InvalidFields(unknown))
    }
}

#[utoipa::path(
    tag = "lifecycle",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    request_body = SetTierDoc,
    responses(
        (status = 200, description = "The organization on its new tier", body = OrganizationDoc),
        (status = 400, description = "Body is not a JSON object", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 409, description = "Changed concurrently; try again", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[put("/admin/orgs/{id}/tier")]
pub async fn set_tier(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = org_id(&path)?;
    let map = object(&body, &["tier", "reason"])?;
    let mut errors = Vec::new();
    let tier = match map.get("tier").and_then(Value::as_str) {
        Some(s) => s
            .parse::<Tier>()
            .map_err(|e| errors.push(FieldError::new("tier", e.to_string())))
            .ok(),
        None => {
            errors.push(FieldError::new("tier", "is required (a string)"));
            None
        }
    };
    let reason = match map.get("reason").and_then(Value::as_str).map(str::trim) {
        Some(r) if !r.is_empty() => Some(r.to_owned()),
        _ => {
            errors.push(FieldError::new(
                "reason",
                "is required: it goes into the audit log",
            ));
            None
        }
    };
    let (Some(tier), Some(reason), true) = (tier, reason, errors.is_empty()) else {
        return Err(ApiError::InvalidFields(errors));
    };
    let org = change_tier_now(&state, &id, tier, reason).await?;
    Ok(HttpResponse::Ok().json(org))
}

/// An operator's tier change (`PUT …/tier`, or `PATCH /admin/orgs/{id}`
/// with a tier): applied at once in either direction through the lifecycle,
/// so it is audited, announced to every replica and notified like any other.
pub(super) async fn change_tier_now(
    state: &HttpState,
    id: &OrgId,
    tier: Tier,
    reason: String,
) -> Result<Organization, ApiError> {
    let now = UnixMillis::now();
    let (org, outcome) = state
        .actors
        .changer
        .request(ChangeRequest {
            org: id.clone(),
            target: tier,
            mode: Mode::Immediate,
            source: "admin".into(),
            reason,
            key: format!("admin:{id}:{}", now.0),
            link: None,
            now,
        })
        .await?;
    tracing::info!(org = %id, outcome = %outcome.describe(), "manual tier change");
    Ok(org)
}

#[utoipa::path(
    tag = "lifecycle",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    responses(
        (status = 200, description = "The tier audit log, oldest first", body = Vec<TierChangeDoc>),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/orgs/{id}/tier-history")]
pub async fn tier_history(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = existing_org(&state, &path).await?;
    Ok(HttpResponse::Ok().json(state.store.tier_history(&id).await?))
}

#[utoipa::path(
    tag = "lifecycle",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    responses(
        (status = 200, description = "Notifications recorded for the organization", body = Vec<NotificationDoc>),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/orgs/{id}/notifications")]
pub async fn notifications(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = existing_org(&state, &path).await?;
    Ok(HttpResponse::Ok().json(state.store.notifications_for_org(&id).await?))
}

#[utoipa::path(
    tag = "lifecycle",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    request_body = NotificationUrlDoc,
    responses(
        (status = 200, description = "The organization", body = OrganizationDoc),
        (status = 400, description = "Body is not a JSON object", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 409, description = "Changed concurrently; try again", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[put("/admin/orgs/{id}/notification-url")]
pub async fn set_notification_url(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = org_id(&path)?;
    let map = object(&body, &["url"])?;
    let url = match map.get("url") {
        Some(Value::Null) => None,
        Some(Value::String(s)) => match reqwest::Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(s.clone()),
            _ => {
                return Err(ApiError::InvalidFields(vec![FieldError::new(
                    "url",
                    "must be an http:// or https:// URL",
                )]))
            }
        },
        _ => {
            return Err(ApiError::InvalidFields(vec![FieldError::new(
                "url",
                "is required: a URL, or null to stop notifications",
            )]))
        }
    };
    let org = state
        .actors
        .changer
        .set_notification_url(&id, url, UnixMillis::now())
        .await?;
    Ok(HttpResponse::Ok().json(org))
}

#[utoipa::path(
    tag = "lifecycle",
    security(("admin_token" = [])),
    params(("event_id" = String, Path, description = "Stripe event id")),
    responses(
        (status = 200, description = "How the event was handled", body = StripeEventView),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "Event not received", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/stripe/events/{event_id}")]
pub async fn stripe_event(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = state
        .store
        .get_job(&job_id(&path))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Stripe event `{path}` not received")))?;
    Ok(HttpResponse::Ok().json(StripeEventView {
        id: path.into_inner(),
        status: job.status,
        note: job.note,
        attempts: job.attempts,
        received_at: job.created_at,
        updated_at: job.updated_at,
        next_attempt_at: job.next_attempt_at,
    }))
}

#[utoipa::path(
    operation_id = "lifecycle_tick",
    tag = "lifecycle",
    security(("admin_token" = [])),
    request_body(content = Option<TickDoc>, description = "Optional; empty body: now"),
    responses(
        (status = 200, description = "What the tick did", body = LifecycleTickDoc),
        (status = 400, description = "Body is not a JSON object", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 422, description = "Invalid fields, or `now` in the future", body = ErrorBody),
        (status = 503, description = "Scheduler unavailable", body = ErrorBody),
    )
)]
#[post("/admin/lifecycle/tick")]
pub async fn tick(
    _: AdminAuth,
    state: web::Data<HttpState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let map = object(&body, &["now"])?;
    let requested = match map.get("now") {
        None | Some(Value::Null) => None,
        Some(v) => match super::millis::from_json(v) {
            Some(ms) => Some(UnixMillis(ms)),
            None => {
                return Err(ApiError::InvalidFields(vec![FieldError::new(
                    "now",
                    "must be milliseconds since the Unix epoch",
                )]))
            }
        },
    };
    let now = state.lifecycle.now(requested)?;
    let report = state
        .actors
        .lifecycle
        .send(Tick { now })
        .await
        .map_err(|_| ApiError::Unavailable("the lifecycle scheduler"))?;
    Ok(HttpResponse::Ok().json(report))
}
