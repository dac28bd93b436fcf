//! `/health`, `/ready` and `/metrics`: what Railway and Prometheus poll.

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use dynabase_actors::UnixMillis;
use serde::Serialize;
use utoipa::ToSchema;

use super::HttpState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer of `/health`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// The answer of `/ready` (200 or 503 alike).
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    #[schema(value_type = String)]
    status: &'static str,
    /// `ok`, `unreachable` or `timeout`.
    #[schema(value_type = String)]
    store: &'static str,
    /// `embedded` or `mongodb`.
    #[schema(value_type = String)]
    store_kind: &'static str,
    /// `ok`, `unreachable`, `timeout` or `not configured`.
    #[schema(value_type = String)]
    redis: &'static str,
    tiers: TierFreshness,
}

/// How current the tiers this replica admits on are.
#[derive(Serialize, ToSchema)]
pub struct TierFreshness {
    /// The shared tier cache: `redis` or `none`.
    #[schema(value_type = String)]
    cache: &'static str,
    tenants: usize,
    stale_tenants: usize,
    /// Unix milliseconds when the longest-stale tenant's check first failed.
    #[schema(value_type = Option<i64>)]
    stale_since: Option<UnixMillis>,
    /// `subscribed`, `disconnected` or `not configured`.
    #[schema(value_type = String)]
    invalidations: &'static str,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(
    tag = "health",
    responses((status = 200, description = "The process serves HTTP", body = Health))
)]
#[get("/health")]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Readiness: the store and (when configured) Redis answer.
#[utoipa::path(
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "The store or Redis does not answer", body = Readiness),
    )
)]
#[get("/ready")]
pub async fn ready(state: web::Data<HttpState>) -> HttpResponse {
    let store = match tokio::time::timeout(PROBE_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            "unreachable"
        }
        Err(_) => "timeout",
    };
    let redis = match &state.redis {
        None => "not configured",
        Some(probe) => match tokio::time::timeout(PROBE_TIMEOUT, probe.ping()).await {
            Ok(Ok(())) => "ok",
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: redis unreachable");
                "unreachable"
            }
            Err(_) => "timeout",
        },
    };
    let ready = store == "ok" && matches!(redis, "ok" | "not configured");
    // Stale tiers do not make the replica unready: it keeps admitting on
    // the last known tier (see docs/lifecycle.md), but operators see it.
    let tiers = state.actors.tenants.tier_status();
    let body = Readiness {
        status: if ready { "ready" } else { "not ready" },
        store,
        store_kind: state.store_kind,
        redis,
        tiers: TierFreshness {
            cache: tiers.cache,
            tenants: tiers.tenants,
            stale_tenants: tiers.stale_tenants,
            stale_since: tiers.oldest_stale_since,
            invalidations: match &state.lifecycle.invalidations {
                None => "not configured",
                Some(l) if l.is_subscribed() => "subscribed",
                Some(_) => "disconnected",
            },
        },
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus text exposition.
#[get("/metrics")]
pub async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    ::metrics::gauge!("dynabase_tenant_actors").set(state.actors.tenants.len() as f64);
    // Also refreshes the stale-tenant gauge.
    state.actors.tenants.tier_status();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
