//! The port through which notifications leave the platform: one attempt
//! to deliver one outbound notification (the binary's HTTP adapter signs and
//! POSTs it). Retries and at-least-once delivery are the `notifier`'s.

use async_trait::async_trait;

use crate::domain::time::UnixMillis;

/// Why an outbound notification was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("receiver answered HTTP {0}")]
    Rejected(u16),
    #[error("receiver unreachable: {0}")]
    Unreachable(String),
    #[error("notification URL unusable: {0}")]
    BadUrl(String),
}

impl DeliveryError {
    /// Retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::BadUrl(_))
    }
}

/// Sends one outbound notification (the binary's HTTP adapter).
#[async_trait]
pub trait NotificationSender: Send + Sync + 'static {
    /// POSTs `body` (JSON) to `url`; `Ok` only on a 2xx answer.
    async fn send(&self, url: &str, body: &str, now: UnixMillis) -> Result<(), DeliveryError>;
}
