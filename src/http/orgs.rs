//! `/admin/orgs`: create, list, read and update organizations.

use actix_web::{get, patch, post, web, HttpResponse};
use dynabase_actors::{OrgId, UnixMillis};

use super::{
    auth::AdminAuth,
    error::{ApiError, ErrorBody},
    lifecycle_admin, org_body, HttpState,
};
use crate::org_admin;

pub(super) fn org_id(raw: &str) -> Result<OrgId, ApiError> {
    // A syntactically impossible id cannot exist.
    OrgId::parse(raw).map_err(|_| ApiError::org_not_found(raw))
}

/// The id of an organization that exists in the store, or 404.
pub(super) async fn existing_org(state: &HttpState, raw: &str) -> Result<OrgId, ApiError> {
    let id = org_id(raw)?;
    if state.store.get_org(&id).await?.is_none() {
        return Err(ApiError::org_not_found(&id));
    }
    Ok(id)
}

#[utoipa::path(
    operation_id = "create_org",
    tag = "organizations",
    security(("admin_token" = [])),
    request_body = crate::http::api_types::CreateOrgDoc,
    responses(
        (status = 201, description = "Created", body = crate::http::api_types::OrganizationDoc),
        (status = 400, description = "Body is not a JSON object", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 409, description = "The id exists already", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[post("/admin/orgs")]
pub async fn create(
    _: AdminAuth,
    state: web::Data<HttpState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req = org_body::create_org(&body)?;
    let org = org_admin::create(state.store.as_ref(), req, UnixMillis::now()).await?;
    ::metrics::counter!("dynabase_orgs_created_total").increment(1);
    // Replicas that recently refused this name as unknown learn it exists.
    state.actors.tenants.organization_changed(org.clone());
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/admin/orgs/{}", org.id)))
        .json(org))
}

#[utoipa::path(
    operation_id = "list_orgs",
    tag = "organizations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every organization", body = Vec<crate::http::api_types::OrganizationDoc>),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/orgs")]
pub async fn list(_: AdminAuth, state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.list_orgs().await?))
}

#[utoipa::path(
    operation_id = "show_org",
    tag = "organizations",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    responses(
        (status = 200, description = "The organization", body = crate::http::api_types::OrganizationDoc),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/orgs/{id}")]
pub async fn show(
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
    Ok(HttpResponse::Ok().json(org))
}

#[utoipa::path(
    operation_id = "update_org",
    tag = "organizations",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    request_body = crate::http::api_types::UpdateOrgDoc,
    responses(
        (status = 200, description = "The updated organization", body = crate::http::api_types::OrganizationDoc),
        (status = 400, description = "Body is not a JSON object", body = ErrorBody),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 409, description = "Changed concurrently; try again", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[patch("/admin/orgs/{id}")]
pub async fn update(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = org_id(&path)?;
    let mut change = org_body::update_org(&body)?;
    // A tier takes the lifecycle's route, as with `PUT …/tier`; the other
    // fields are written after it.
    let reason = change.reason.take();
    let tiered = match change.tier.take() {
        Some(tier) => {
            let reason = reason.unwrap_or_else(|| "changed by admin".to_owned());
            Some(lifecycle_admin::change_tier_now(&state, &id, tier, reason).await?)
        }
        None => None,
    };
    if let Some(org) = tiered.filter(|_| !change.changes_anything()) {
        return Ok(HttpResponse::Ok().json(org));
    }
    let org = org_admin::update(
        state.store.as_ref(),
        &id,
        change,
        "admin",
        UnixMillis::now(),
    )
    .await?;
    state.actors.tenants.organization_changed(org.clone());
    Ok(HttpResponse::Ok().json(org))
}
