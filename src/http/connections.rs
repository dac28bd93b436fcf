//! `/admin/orgs/{id}/connections` and `/admin/connections/{id}`: live proxy
//! sessions, and ending one.

use actix_web::{delete, get, web, HttpResponse};
use serde_json::json;

use super::{auth::AdminAuth, error::ApiError, orgs::existing_org, HttpState};

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
#[delete("/admin/connections/{id}")]
pub async fn terminate(
    _: AdminAuth,
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::NotFound(format!("connection `{path}` not found"));
    let id: u64 = path.parse().map_err(|_| not_found())?;
    if state.sessions.terminate(id) {
        Ok(HttpResponse::Accepted().json(json!({"id": id, "status": "terminating"})))
    } else {
        Err(not_found())
    }
}
