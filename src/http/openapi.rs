//! The OpenAPI 3.1 document of the admin (`/admin`) and customer (`/v1`)
//! APIs and the probes, served at `GET /openapi.json` without
//! authentication.
//!
//! It is assembled from the handlers' `#[utoipa::path]` annotations (path
//! and method come from each route's actix-web attribute) and the
//! `ToSchema` types they answer with. `tests/openapi.rs` fails when a route
//! is registered without being listed here; the schemathesis step of
//! `scripts/test.sh` checks the running binary's answers against it.

use std::sync::OnceLock;

use actix_web::{get, http::header::ContentType, HttpResponse};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use super::{billing, calibration, connections, health, lifecycle_admin, orgs, scale, usage};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dynabase gateway API",
        description = "Admin API (`/admin`, operator bearer token), customer API \
                       (`/v1`, the organization's API token) and probes. Errors are \
                       `{\"error\":{\"code\",\"message\",\"fields\"?}}`."
    ),
    paths(
        health::health,
        health::ready,
        orgs::create,
        orgs::list,
        orgs::show,
        orgs::update,
        connections::for_org,
        connections::terminate,
        usage::admin_report,
        usage::adjust,
        usage::issue_token,
        usage::customer_report,
        billing::preview,
        billing::run,
        billing::org_records,
        billing::admin_set_cap,
        billing::customer_set_cap,
        billing::modes,
        billing::set_modes,
        calibration::calibrate,
        calibration::list,
        calibration::show,
        calibration::margin,
        lifecycle_admin::set_tier,
        lifecycle_admin::tier_history,
        lifecycle_admin::notifications,
        lifecycle_admin::set_notification_url,
        lifecycle_admin::stripe_event,
        lifecycle_admin::tick,
        scale::set_compute,
        scale::show_compute,
        scale::suspend,
        scale::admin_wake,
        scale::customer_wake,
        scale::tick,
    ),
    modifiers(&SecuritySchemes, &RequestMinimums),
    tags(
        (name = "health", description = "Liveness and readiness, no authentication"),
        (name = "organizations", description = "Organizations"),
        (name = "connections", description = "Live proxy sessions"),
        (name = "usage", description = "Usage reports, adjustments and API tokens"),
        (name = "billing", description = "Charges, billing runs, spend caps, modes"),
        (name = "calibration", description = "Railway calibration and margins"),
        (name = "lifecycle", description = "Tiers, notifications, Stripe events"),
        (name = "scale-to-zero", description = "Compute drivers, suspend and wake"),
        (name = "customer", description = "The organization's own API, with its API token"),
    )
)]
pub struct ApiDoc;

/// The two bearer schemes the paths refer to.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The operator token, DYNABASE_ADMIN_TOKEN"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "org_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The organization's API token, `dyn_<org>_<64 hex digits>`, \
                         from POST /admin/orgs/{id}/api-token",
                    ))
                    .build(),
            ),
        );
    }
}

/// Request bodies whose properties are each optional but not all at once.
struct RequestMinimums;

impl Modify for RequestMinimums {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        // `PUT /admin/modes`: billing, enforcement or both.
        if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(modes))) =
            components.schemas.get_mut("ModesRequest")
        {
            modes.min_properties = Some(1);
        }
    }
}

/// The document as JSON, built once.
pub fn document_json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi().to_json().unwrap_or_else(|e| {
            // Only a bug in the annotations can get here; serve that fact
            // rather than nothing.
            tracing::error!(error = %e, "OpenAPI document not serializable");
            String::from("{}")
        })
    })
}

/// `GET /openapi.json`.
#[get("/openapi.json")]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(document_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_modes_request_needs_a_switch() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        let modes = &doc["components"]["schemas"]["ModesRequest"];
        assert_eq!(modes["minProperties"], 1, "{modes}");
        assert!(
            modes.get("maxProperties").is_none(),
            "both switches at once are fine"
        );
    }

    #[test]
    fn the_document_is_json_with_both_security_schemes() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["admin_token"]["scheme"], "bearer");
        assert_eq!(schemes["org_token"]["scheme"], "bearer");
        assert!(doc["paths"]["/admin/orgs/{id}"]["patch"].is_object());
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    }
}
