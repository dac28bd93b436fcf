//! The HTTP API (actix-web): health, readiness, metrics, the admin routes
//! and the customer's usage route.
//!
//! Handlers translate HTTP to store calls and actor messages; they hold no
//! policy of their own.

mod allowed_methods;
mod api_token;
pub(crate) mod api_types;
mod auth;
mod billing;
mod calibration;
mod connections;
pub mod customer_limits;
mod dashboard;
pub mod error;
mod health;
mod json_object;
mod lifecycle_admin;
mod millis;
pub mod openapi;
mod org_body;
mod orgs;
mod scale;
mod stripe;
mod usage;

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix_web::{dev::Server, web, App, HttpServer};
use dynabase_actors::{supervisor::PlatformActors, Store, TierCatalog};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::{
    adapters::{
        redis::RedisProbe, redis_tier_cache::ListenerStatus, stripe_webhook::StripeWebhooks,
    },
    proxy::sessions::SessionTable,
    settings::Secret,
};

/// What every handler can reach.
pub struct HttpState {
    pub store: Arc<dyn Store>,
    /// `"embedded"` or `"mongodb"`, shown by `/ready`.
    pub store_kind: &'static str,
    pub actors: PlatformActors,
    pub admin_token: Secret,
    pub metrics: PrometheusHandle,
    pub redis: Option<RedisProbe>,
    pub sessions: Arc<SessionTable>,
    pub catalog: Arc<TierCatalog>,
    /// Per-organization request limits of the customer routes (`/v1`).
    pub customer_limits: customer_limits::CustomerLimits,
    pub lifecycle: LifecycleHttp,
    /// Billing rules the reports show (currency, upgrade URL).
    pub billing: dynabase_actors::billing::BillingConfig,
    /// Railway's prices, for the margin report.
    pub calibration: dynabase_actors::calibration::CalibrationConfig,
    /// This replica's enforcement switch (set at once by `PUT /admin/modes`;
    /// the others follow the store within a second).
    pub enforcement: dynabase_actors::tenant::enforcement::EnforcementSwitch,
    /// Suspends and wakes databases (scale-to-zero).
    pub scale: dynabase_actors::scale_to_zero::ScaleToZero,
}

/// What the tier lifecycle's routes need.
#[derive(Default)]
pub struct LifecycleHttp {
    /// `None` when no Stripe signing secret is configured.
    pub stripe: Option<StripeWebhooks>,
    pub allow_clock_override: bool,
    /// The Redis invalidation listener, when Redis is configured.
    pub invalidations: Option<Arc<ListenerStatus>>,
}

/// A `now` at most this far ahead of the wall clock needs no override
/// (clocks of replicas and callers differ a little).
const CLOCK_SLACK_MS: i64 = 1_000;

impl LifecycleHttp {
    /// The instant an operator asked a route to act at: the wall clock, or
    /// `requested` — in the future only with
    /// `lifecycle.allow_clock_override` (tests; never in production).
    pub(crate) fn now(
        &self,
        requested: Option<dynabase_actors::UnixMillis>,
    ) -> Result<dynabase_actors::UnixMillis, error::ApiError> {
        let wall = dynabase_actors::UnixMillis::now();
        let now = requested.unwrap_or(wall);
        if now.0 > wall.0.saturating_add(CLOCK_SLACK_MS) && !self.allow_clock_override {
            return Err(error::ApiError::InvalidFields(vec![
                error::FieldError::new(
                    "now",
                    "is in the future; only allowed with lifecycle.allow_clock_override",
                ),
            ]));
        }
        Ok(now)
    }
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(health::health)
        .service(health::ready)
        .service(health::metrics)
        .service(openapi::document)
        .service(orgs::create)
        .service(orgs::list)
        .service(orgs::show)
        .service(orgs::update)
        .service(connections::for_org)
        .service(connections::terminate)
        .service(usage::admin_report)
        .service(usage::adjust)
        .service(usage::issue_token)
        .service(usage::customer_report)
        .service(dashboard::show)
        .service(dashboard::sign_in)
        .service(dashboard::sign_out)
        .service(billing::preview)
        .service(billing::run)
        .service(billing::org_records)
        .service(billing::admin_set_cap)
        .service(billing::customer_set_cap)
        .service(billing::modes)
        .service(billing::set_modes)
        .service(calibration::calibrate)
        .service(calibration::list)
        .service(calibration::show)
        .service(calibration::margin)
        .service(lifecycle_admin::set_tier)
        .service(lifecycle_admin::tier_history)
        .service(lifecycle_admin::notifications)
        .service(lifecycle_admin::set_notification_url)
        .service(lifecycle_admin::stripe_event)
        .service(lifecycle_admin::tick)
        .service(scale::set_compute)
        .service(scale::show_compute)
        .service(scale::suspend)
        .service(scale::admin_wake)
        .service(scale::customer_wake)
        .service(scale::tick)
        .service(
            web::resource("/webhooks/stripe")
                .app_data(web::PayloadConfig::new(stripe::MAX_BODY))
                .route(web::post().to(stripe::receive)),
        );
}

/// Starts serving on `listener`; the caller stops it through the returned
/// server's handle (signals are handled by the caller, not actix).
pub fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown_deadline: Duration,
) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(64 * 1024))
            // actix-web's own extractor errors answer in the API's JSON
            // error format (the OpenAPI document promises it).
            .app_data(web::QueryConfig::default().error_handler(error::query_error))
            .app_data(web::PathConfig::default().error_handler(error::path_error))
            .app_data(web::JsonConfig::default().error_handler(error::json_error))
            .configure(routes)
            .default_service(web::to(error::no_route))
            .wrap(actix_web::middleware::ErrorHandlers::new().handler(
                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                error::payload_too_large,
            ))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(shutdown_deadline.as_secs().max(1))
    .listen(listener)?
    .run();
    Ok(server)
}
