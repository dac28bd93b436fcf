//! `/health`, `/ready` and `/metrics`: what Railway and Prometheus poll.

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use serde_json::json;

use super::HttpState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness: the process serves HTTP.
#[get("/health")]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: the store and (when configured) Redis answer.
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
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "store": store,
        "store_kind": state.store_kind,
        "redis": redis,
        "tiers": {
            "cache": tiers.cache,
            "tenants": tiers.tenants,
            "stale_tenants": tiers.stale_tenants,
            "stale_since": tiers.oldest_stale_since,
            "invalidations": match &state.lifecycle.invalidations {
                None => "not configured",
                Some(l) if l.is_subscribed() => "subscribed",
                Some(_) => "disconnected",
            },
        },
    });
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
