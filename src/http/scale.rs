//! Scale-to-zero routes (docs/scale-to-zero.md):
//!
//! - `PUT /admin/orgs/{id}/compute`: the org's compute driver, e.g.
//!   `{"driver":"local","data_dir":"/srv/pg/acme","port":5433}`;
//!   `GET /admin/orgs/{id}/compute`: driver and state;
//! - `POST /admin/orgs/{id}/suspend`: suspend now (waits for the driver);
//! - `POST /admin/orgs/{id}/wake` and, with the org's API token,
//!   `POST /v1/wake`: start a wake and answer at once (202) with the state
//!   and the expected ready time;
//! - `POST /admin/scale-to-zero/tick` `{"now":<unix ms>}`: one idle check
//!   now (`now` in the future only with `lifecycle.allow_clock_override`).

use actix_web::{get, post, put, web, HttpRequest, HttpResponse};
use dynabase_actors::{
    domain::compute::{Compute, ComputeSpec, Phase},
    scale_to_zero::ControlError,
    OrgId, Organization, UnixMillis,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    api_token,
    api_types::{ComputeSpecDoc, PhaseDoc, ScaleTickDoc, TickDoc},
    auth::AdminAuth,
    error::{ApiError, ErrorBody, FieldError},
    orgs::org_id,
    HttpState,
};

/// Compute writes retried when the org changes under them.
const CAS_ATTEMPTS: usize = 3;
/// Expected wake time before an org has woken once.
const FIRST_WAKE_GUESS_MS: i64 = 1_000;

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(id) => ApiError::org_not_found(&id),
            e @ (ControlError::AlwaysOn(_) | ControlError::Busy { .. }) => {
                ApiError::Conflict(e.to_string())
            }
            ControlError::Store(e) => e.into(),
            ControlError::Driver(e) => {
                tracing::warn!(error = %e, "operator suspend failed");
                ApiError::Unavailable("the compute driver")
            }
        }
    }
}

/// What the API shows of an org's compute section. `spec` and
/// `last_error` (driver output) only to operators.
#[derive(Serialize, ToSchema)]
pub struct ComputeView {
    #[schema(value_type = String)]
    org: OrgId,
    /// `always_on`, `local` or `command`.
    #[schema(value_type = String)]
    driver: &'static str,
    #[schema(value_type = PhaseDoc)]
    state: Phase,
    /// Unix milliseconds when `state` was entered.
    #[schema(value_type = i64)]
    since: UnixMillis,
    cold_starts: u64,
    last_wake_ms: Option<u64>,
    /// Unix milliseconds: now if active, else after a wake as long as the
    /// last one.
    #[schema(value_type = i64)]
    expected_ready_at: UnixMillis,
    /// Operators only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = ComputeSpecDoc, required = false)]
    spec: Option<ComputeSpec>,
    /// Operators only: the last driver failure, kept until the next success.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, required = false)]
    last_error: Option<Option<String>>,
}

fn view(org: &Organization, admin: bool) -> ComputeView {
    let c = &org.compute;
    ComputeView {
        org: org.id.clone(),
        driver: c.spec.driver_name(),
        state: c.state.phase,
        since: c.state.since,
        cold_starts: c.state.cold_starts,
        last_wake_ms: c.state.last_wake_ms,
        expected_ready_at: expected_ready_at(&c.state, UnixMillis::now()),
        spec: admin.then(|| c.spec.clone()),
        last_error: admin.then(|| c.state.last_error.clone()),
    }
}

/// When a connection can expect the database: now if active, else after
/// a wake as long as the last one.
fn expected_ready_at(
    state: &dynabase_actors::domain::compute::ComputeState,
    now: UnixMillis,
) -> UnixMillis {
    if state.phase == Phase::Active {
        return now;
    }
    let last = state
        .last_wake_ms
        .and_then(|ms| i64::try_from(ms).ok())
        .unwrap_or(FIRST_WAKE_GUESS_MS);
    UnixMillis(now.0.saturating_add(last))
}

fn parse_spec(body: &[u8]) -> Result<ComputeSpec, ApiError> {
    let spec: ComputeSpec =
        serde_json::from_slice(body).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    spec.validate()
        .map_err(|e| ApiError::InvalidFields(vec![FieldError::new("compute", e.to_string())]))?;
    Ok(spec)
}

#[utoipa::path(
    tag = "scale-to-zero",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    request_body = ComputeSpecDoc,
    responses(
        (status = 200, description = "The compute section", body = ComputeView),
        (status = 400, description = "Body is not a known driver's JSON", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 409, description = "Suspending or waking, or changed concurrently", body = ErrorBody),
        (status = 422, description = "Invalid driver settings", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[put("/admin/orgs/{id}/compute")]
pub async fn set_compute(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = org_id(&path)?;
    let spec = parse_spec(&body)?;
    for _ in 0..CAS_ATTEMPTS {
        let mut org = state
            .store
            .get_org(&id)
            .await?
            .ok_or_else(|| ApiError::org_not_found(&id))?;
        let seen = org.updated_at;
        let now = UnixMillis(UnixMillis::now().0.max(seen.0 + 1));
        if matches!(org.compute.state.phase, Phase::Suspending | Phase::Waking) {
            return Err(ApiError::Conflict(format!(
                "organization `{id}` is {}; change its driver once that is done",
                org.compute.state.phase.as_str()
            )));
        }
        let was = org.compute.spec.clone();
        org.compute.spec = spec.clone();
        if !spec.can_suspend() || !was.can_suspend() {
            // A database that just got (or lost) a driver runs: the idle
            // clock starts now.
            let cold_starts = org.compute.state.cold_starts;
            org.compute = Compute {
                spec: spec.clone(),
                ..Compute::default()
            };
            org.compute.state.cold_starts = cold_starts;
            org.compute.enter(Phase::Active, now);
        }
        org.updated_at = now;
        if state.store.update_org_if_unchanged(&org, seen).await? {
            tracing::info!(target: "audit", org = %id, driver = spec.driver_name(), "compute driver set");
            if let Err(e) = state.actors.tenants.publish_change(org.clone()).await {
                tracing::warn!(org = %id, error = %e, "change announcement failed; retried in the background");
            }
            return Ok(HttpResponse::Ok().json(view(&org, true)));
        }
    }
    Err(ApiError::Conflict(format!(
        "organization `{id}` is being changed concurrently; try again"
    )))
}

#[utoipa::path(
    tag = "scale-to-zero",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    responses(
        (status = 200, description = "The compute section", body = ComputeView),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/orgs/{id}/compute")]
pub async fn show_compute(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = org_id(&path)?;
    let org = state
        .store
        .get_org(&id)
        .await?
        .ok_or_else(|| ApiError::org_not_found(&id))?;
    Ok(HttpResponse::Ok().json(view(&org, true)))
}

#[utoipa::path(
    tag = "scale-to-zero",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    responses(
        (status = 200, description = "Suspended", body = ComputeView),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 409, description = "Always on, or waking", body = ErrorBody),
        (status = 503, description = "Store or compute driver unavailable", body = ErrorBody),
    )
)]
#[post("/admin/orgs/{id}/suspend")]
pub async fn suspend(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = org_id(&path)?;
    let org = state.scale.suspend_now(&id).await?;
    Ok(HttpResponse::Ok().json(view(&org, true)))
}

async fn wake(state: &HttpState, id: &OrgId, admin: bool) -> Result<HttpResponse, ApiError> {
    let org = state.scale.current(id).await?;
    if org.compute.state.phase == Phase::Active {
        return Ok(HttpResponse::Ok().json(view(&org, admin)));
    }
    state.scale.start_wake(id);
    let mut body = view(&org, admin);
    body.state = Phase::Waking;
    Ok(HttpResponse::Accepted().json(body))
}

#[utoipa::path(
    tag = "scale-to-zero",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    responses(
        (status = 200, description = "Already active", body = ComputeView),
        (status = 202, description = "Waking; see `expected_ready_at`", body = ComputeView),
        (status = 409, description = "The always_on driver: nothing to wake", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[post("/admin/orgs/{id}/wake")]
pub async fn admin_wake(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = org_id(&path)?;
    wake(&state, &id, true).await
}

#[utoipa::path(
    tag = "customer",
    security(("org_token" = [])),
    responses(
        (status = 200, description = "Already active", body = ComputeView),
        (status = 202, description = "Waking; see `expected_ready_at`", body = ComputeView),
        (status = 409, description = "The always_on driver: nothing to wake", body = ErrorBody),
        (status = 401, description = "No or wrong org API token", body = ErrorBody),
        (status = 429, description = "Over the tier's request rate; see Retry-After", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[post("/v1/wake")]
pub async fn customer_wake(
    req: HttpRequest,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let id = api_token::customer(&req, &state).await?;
    wake(&state, &id, false).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TickBody {
    #[serde(default, deserialize_with = "super::millis::optional_millis")]
    now: Option<i64>,
}

#[utoipa::path(
    operation_id = "scale_to_zero_tick",
    tag = "scale-to-zero",
    security(("admin_token" = [])),
    request_body(content = Option<TickDoc>, description = "Optional; empty body: now"),
    responses(
        (status = 200, description = "What the idle check did", body = ScaleTickDoc),
        (status = 400, description = "Body is not a JSON object of known fields", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 422, description = "`now` in the future", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[post("/admin/scale-to-zero/tick")]
pub async fn tick(
    _: AdminAuth,
    state: web::Data<HttpState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    // Empty and `null` both mean "no settings".
    let body: TickBody = if body.is_empty() {
        TickBody::default()
    } else {
        serde_json::from_slice::<Option<TickBody>>(&body)
            .map_err(|e| ApiError::MalformedBody(e.to_string()))?
            .unwrap_or_default()
    };
    let now = state.lifecycle.now(body.now.map(UnixMillis))?;
    let report = state.scale.tick(now, &state.sessions.orgs()).await?;
    Ok(HttpResponse::Ok().json(report))
}
