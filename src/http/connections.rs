//! `/admin/orgs/{id}/connections` and `/admin/connections/{id}`: live proxy
//! sessions, and ending one.

use actix_web::{delete, get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    auth::AdminAuth,
    error::{ApiError, ErrorBody},
    orgs::existing_org,
    HttpState,
};
use crate::proxy::sessions::SessionView;

/// A session being ended.
#[derive(Serialize, ToSchema)]
pub struct Terminating {
    id: u64,
    /// Always `terminating`.
    #[schema(value_type = String)]
    status: &'static str,
}

#[utoipa::path(
    tag = "connections",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Organization id", example = "acme")),
    responses(
        (status = 200, description = "The organization's sessions on this replica", body = Vec<SessionView>),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such organization", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
#[get("/admin/orgs/{id}/connections")]
pub async fn for_org(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = existing_org(&state, &path).await?;
    Ok(HttpResponse::Ok().json(state.sessions.for_org(&id)))
}

/// Ends a session with FATAL 57P01, as `pg_terminate_backend` would.
#[utoipa::path(
    tag = "connections",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Session id (a number)")),
    responses(
        (status = 202, description = "The session is being ended", body = Terminating),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such session on this replica", body = ErrorBody),
    )
)]
#[delete("/admin/connections/{id}")]
pub async fn terminate(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::NotFound(format!("connection `{path}` not found"));
    let id: u64 = path.parse().map_err(|_| not_found())?;
    if state.sessions.terminate(id) {
        Ok(HttpResponse::Accepted().json(Terminating {
            id,
            status: "terminating",
        }))
    } else {
        Err(not_found())
    }
}
