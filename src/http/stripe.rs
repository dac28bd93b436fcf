//! `POST /webhooks/stripe`: Stripe's webhook endpoint.
//!
//! The `Stripe-Signature` header is checked against the raw body before
//! anything else; a request that is unsigned, forged, stale or unreadable is
//! answered 400 and changes nothing. A verified event is handed to the
//! WebhookHandler actor, which records it (a redelivery is recognised by its
//! event id) and applies its effect in the background, so the answer comes
//! as soon as the event is safely stored: 200 `{"received":true,...}`.
//! If it cannot be stored, 503 — Stripe delivers it again later.

use actix_web::{web, HttpRequest, HttpResponse};
use dynabase_actors::{
    webhook_handler::{Accept, Acceptance},
    UnixMillis,
};
use serde_json::json;

use super::HttpState;

/// Stripe's signature header.
const SIGNATURE_HEADER: &str = "Stripe-Signature";
/// Stripe events (invoices with many lines) can be large.
pub const MAX_BODY: usize = 1024 * 1024;

fn refuse(
    status: actix_web::http::StatusCode,
    code: &'static str,
    message: String,
) -> HttpResponse {
    metrics::counter!("dynabase_stripe_webhooks_refused_total", "reason" => code).increment(1);
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message}}))
}

pub async fn receive(
    state: web::Data<HttpState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let Some(webhooks) = &state.lifecycle.stripe else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "Stripe webhooks are not configured (STRIPE_WEBHOOK_SECRET)".into(),
        );
    };
    let Some(signature) = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "missing_signature",
            format!("the {SIGNATURE_HEADER} header is required"),
        );
    };
    let Ok(payload) = std::str::from_utf8(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "malformed_body",
            "the body is not UTF-8".into(),
        );
    };
    let now = UnixMillis::now();
    let event = match webhooks.verify(payload, signature, now.0.div_euclid(1000)) {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(error = %e, "Stripe webhook refused");
            return refuse(StatusCode::BAD_REQUEST, "invalid_signature", e.to_string());
        }
    };
    let event_id = event.id.clone();
    match state.actors.webhooks.send(Accept { event, now }).await {
        Ok(Ok(acceptance)) => HttpResponse::Ok().json(json!({
            "received": true,
            "id": event_id,
            "duplicate": acceptance == Acceptance::Duplicate,
        })),
        Ok(Err(e)) => {
            tracing::error!(event = %event_id, error = %e, "cannot record Stripe event; Stripe will retry");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event could not be recorded; deliver it again later".into(),
            )
        }
        Err(e) => {
            tracing::error!(event = %event_id, error = %e, "webhook handler unavailable");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event could not be recorded; deliver it again later".into(),
            )
        }
    }
}
