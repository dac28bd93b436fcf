//! Outbound notification webhooks: a JSON POST to the organization's URL,
//! signed so the receiver can tell it comes from us.
//!
//! The `Dynabase-Signature` header follows Stripe's scheme, which receivers
//! often already know how to check: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">` keyed with `notifications.signing_secret`
//! (`DYNABASE_NOTIFICATION_SECRET`). Without a secret the header is left out.
//! Retries, backoff and at-least-once delivery are the lifecycle's
//! (`dynabase_actors::lifecycle::notifier`); this adapter makes one attempt.

use std::time::Duration;

use async_trait::async_trait;
use dynabase_actors::{
    lifecycle::{DeliveryError, NotificationSender},
    UnixMillis,
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::settings::Secret;

/// The header carrying our signature.
pub const SIGNATURE_HEADER: &str = "Dynabase-Signature";
/// One delivery attempt may take this long.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Sends notifications over HTTP(S).
pub struct HttpNotificationSender {
    client: reqwest::Client,
    secret: Option<Secret>,
}

impl HttpNotificationSender {
    pub fn new(secret: Option<Secret>) -> Result<Self, OutboundError> {
        // reqwest is built without a default crypto provider; use ring, as
        // the rest of the binary does. Fails harmlessly when already set.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, secret })
    }
}

/// `t=<secs>,v1=<hex>` over `"<secs>.<body>"`.
pub fn signature(secret: &str, body: &str, secs: i64) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(format!("{secs}.{body}").as_bytes());
    format!("t={secs},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait]
impl NotificationSender for HttpNotificationSender {
    async fn send(&self, url: &str, body: &str, now: UnixMillis) -> Result<(), DeliveryError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| DeliveryError::BadUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(DeliveryError::BadUrl(format!(
                "scheme {} is not http(s)",
                parsed.scheme()
            )));
        }
        let mut request = self
            .client
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        if let Some(secret) = &self.secret {
            request = request.header(
                SIGNATURE_HEADER,
                signature(secret.expose(), body, now.0.div_euclid(1000)),
            );
        }
        let response = request
            .send()
            .await
            .map_err(|e| DeliveryError::Unreachable(e.without_url().to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Rejected(response.status().as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_stripe_scheme() {
        // Same construction as Stripe's, so their verifier accepts ours.
        let body = r#"{"id":"evt_x","object":"event"}"#;
        let ours = signature("whsec_k", body, 1_700_000_000);
        assert_eq!(
            ours,
            stripe_webhook::Webhook::generate_test_header(body, "whsec_k", Some(1_700_000_000))
        );
    }
}
