//! Stripe invoice items: the [`InvoiceItems`] port on async-stripe's API
//! client (`POST /v1/invoiceitems`, `GET /v1/invoiceitems`).
//!
//! - `create` sends the request's idempotency key as `Idempotency-Key` and
//!   is tried once: retries are the billing job's, with the same key, after
//!   asking [`InvoiceItems::find`] first (Stripe forgets keys after a day).
//! - `find` lists the customer's items created since the period began,
//!   newest first, a page of [`PAGE_SIZE`] at a time, and matches the
//!   `dynabase_org` / `dynabase_period` metadata.
//! - Failures: network errors, timeouts, 429 and 5xx (and answers that
//!   cannot be read) are [`ProviderError::Transient`]; any other 4xx is
//!   [`ProviderError::Rejected`] with Stripe's message. The API key is
//!   scrubbed from every message, in case an answer ever echoes it.

use std::{collections::HashMap, str::FromStr, time::Duration};

use async_trait::async_trait;
use dynabase_actors::{
    billing::provider::{
        InvoiceItemRef, InvoiceItemRequest, InvoiceItems, ProviderError, ORG_KEY, PERIOD_KEY,
    },
    domain::{org_id::OrgId, records::Period},
};
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::{
    invoice_item::{CreateInvoiceItem, ListInvoiceItem},
    InvoiceItem,
};
use stripe_types::{Currency, RangeQueryTs};

use crate::settings::{api_base_url, Secret, StripeSettings};

/// Items per `GET /v1/invoiceitems` page (Stripe's maximum).
pub const PAGE_SIZE: i64 = 100;
/// Pages `find` reads before it gives up. Only items created since the
/// period began are listed, and the billing job creates one per period, so
/// reaching this means something else floods the customer with items.
pub const MAX_PAGES: usize = 20;
/// Per-request timeout when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the client could not be built. The key itself is never included.
#[derive(Debug, thiserror::Error)]
pub enum StripeBillingError {
    #[error("the Stripe API key is empty")]
    NoKey,
    #[error("the Stripe API key cannot be sent in a header (visible ASCII only)")]
    BadKey,
    #[error("the Stripe API base URL {0:?} must be an http:// or https:// URL")]
    BadBase(String),
    #[error("the Stripe client cannot be built: {0}")]
    Client(String),
}

/// Invoice items on Stripe through async-stripe.
pub struct StripeInvoiceItems {
    client: Client,
    /// Kept only to scrub it from error messages.
    key: Secret,
    timeout: Duration,
}

impl std::fmt::Debug for StripeInvoiceItems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeInvoiceItems")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl StripeInvoiceItems {
    /// A client with the secret key (`STRIPE_API_KEY`), talking to
    /// `api_base` (Stripe's own API when `None`; tests pass stripe-mock).
    pub fn new(api_key: Secret, api_base: Option<&str>) -> Result<Self, StripeBillingError> {
        Self::with_timeout(api_key, api_base, DEFAULT_TIMEOUT)
    }

    /// As [`Self::new`], with a per-request timeout.
    pub fn with_timeout(
        api_key: Secret,
        api_base: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, StripeBillingError> {
        if api_key.is_empty() {
            return Err(StripeBillingError::NoKey);
        }
        // Checked here so that the builder's own message (which would not
        // name the key, but says nothing useful either) is not the one seen.
        if !api_key.expose().bytes().all(|b| b.is_ascii_graphic()) {
            return Err(StripeBillingError::BadKey);
        }
        let mut builder = ClientBuilder::new(api_key.expose()).timeout(timeout);
        if let Some(base) = api_base {
            let base =
                api_base_url(base).ok_or_else(|| StripeBillingError::BadBase(base.to_owned()))?;
            builder = builder.url(base);
        }
        let client = builder
            .build()
            .map_err(|e| StripeBillingError::Client(scrub(&e.to_string(), &api_key)))?;
        Ok(Self {
            client,
            key: api_key,
            timeout,
        })
    }

    /// The adapter the settings describe, or `None` without an API key.
    pub fn from_settings(settings: &StripeSettings) -> Result<Option<Self>, StripeBillingError> {
        if settings.api_key.is_empty() {
            return Ok(None);
        }
        Self::with_timeout(
            settings.api_key.clone(),
            settings.api_base.as_deref(),
            settings.request_timeout,
        )
        .map(Some)
    }

    fn error(&self, err: StripeError) -> ProviderError {
        classify(err, self.timeout, &self.key)
    }
}

#[async_trait]
impl InvoiceItems for StripeInvoiceItems {
    async fn find(
        &self,
        customer_id: &str,
        org: &OrgId,
        period: &Period,
    ) -> Result<Option<InvoiceItemRef>, ProviderError> {
        let since_secs = period.start().0.div_euclid(1000);
        let mut request = ListInvoiceItem::new()
            .customer(customer_id)
            .created(RangeQueryTs::gte(since_secs))
            .limit(PAGE_SIZE);
        for _ in 0..MAX_PAGES {
            let page = request
                .send(&self.client)
                .await
                .map_err(|e| self.error(e))?;
            if let Some(item) = page.data.iter().find(|i| is_ours(i, org, period)) {
                return Ok(Some(reference(item)));
            }
            match page.data.last() {
                Some(last) if page.has_more => {
                    request = request.starting_after(last.id.as_str());
                }
                _ => return Ok(None),
            }
        }
        // Not "none found": answering that could create a second item.
        Err(ProviderError::Transient(format!(
            "customer {customer_id} has more than {} invoice items since {period} began; \
             stopped looking for the one of {org}",
            MAX_PAGES as i64 * PAGE_SIZE
        )))
    }

    async fn create(&self, request: &InvoiceItemRequest) -> Result<InvoiceItemRef, ProviderError> {
        // Refused before sending, the way Stripe would refuse it (400).
        let key =
            IdempotencyKey::new(&request.idempotency_key).map_err(|e| ProviderError::Rejected {
                status: 400,
                message: format!("idempotency key not sent: {e}"),
            })?;
        let Ok(currency) = Currency::from_str(&request.currency);
        let mut create = CreateInvoiceItem::new()
            .customer(request.customer_id.as_str())
            .amount(request.amount_minor)
            .currency(currency)
            .description(request.description.as_str())
            .metadata(
                request
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            );
        if let Some(subscription) = &request.subscription_id {
            create = create.subscription(subscription.as_str());
        }
        let item = create
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key))
            .send(&self.client)
            .await
            .map_err(|e| self.error(e))?;
        Ok(reference(&item))
    }
}

fn is_ours(item: &InvoiceItem, org: &OrgId, period: &Period) -> bool {
    item.metadata.as_ref().is_some_and(|m| {
        m.get(ORG_KEY).map(String::as_str) == Some(org.as_str())
            && m.get(PERIOD_KEY).map(String::as_str) == Some(period.as_str())
    })
}

fn reference(item: &InvoiceItem) -> InvoiceItemRef {
    InvoiceItemRef {
        id: item.id.as_str().to_owned(),
        invoice_id: item
            .invoice
            .as_ref()
            .and_then(|invoice| invoice.id().as_ref())
            .map(|id| id.as_str().to_owned()),
    }
}

/// Transient (retry later) or rejected (retrying the same request fails).
fn classify(err: StripeError, timeout: Duration, key: &Secret) -> ProviderError {
    let error = match err {
        StripeError::Stripe(api, status) => {
            let message = api
                .message
                .clone()
                .unwrap_or_else(|| format!("{} without a message", api.type_.as_str()));
            if status == 429 || !(400..500).contains(&status) {
                ProviderError::Transient(format!("Stripe answered {status}: {message}"))
            } else {
                ProviderError::Rejected { status, message }
            }
        }
        StripeError::Timeout => {
            ProviderError::Transient(format!("no answer from Stripe within {timeout:?}"))
        }
        StripeError::ClientError(e) => {
            ProviderError::Transient(format!("cannot talk to Stripe: {e}"))
        }
        // A failed request whose body is not a Stripe error (a proxy's page,
        // a cut-off body), or a success the typed model cannot read: nothing
        // says retrying is useless.
        StripeError::JSONDeserialize(e) => {
            ProviderError::Transient(format!("unreadable answer from Stripe: {e}"))
        }
        StripeError::ConfigError(e) => {
            ProviderError::Transient(format!("Stripe request not sent: {e}"))
        }
    };
    match error {
        ProviderError::Transient(m) => ProviderError::Transient(scrub(&m, key)),
        ProviderError::Rejected { status, message } => ProviderError::Rejected {
            status,
            message: scrub(&message, key),
        },
        other => other,
    }
}

fn scrub(message: &str, key: &Secret) -> String {
    if key.is_empty() {
        message.to_owned()
    } else {
        message.replace(key.expose(), "<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_get_a_trailing_slash_and_must_be_http() {
        assert_eq!(
            api_base_url("http://127.0.0.1:12111").as_deref(),
            Some("http://127.0.0.1:12111/")
        );
        assert_eq!(
            api_base_url("https://api.stripe.com/").as_deref(),
            Some("https://api.stripe.com/")
        );
        for bad in [
            "127.0.0.1:12111",
            "ftp://x",
            "http://",
            "http:///v1",
            "http://x/?a=1",
        ] {
            assert!(api_base_url(bad).is_none(), "{bad}");
            assert!(matches!(
                StripeInvoiceItems::new(Secret::new("sk_test_1"), Some(bad)),
                Err(StripeBillingError::BadBase(_))
            ));
        }
    }

    #[test]
    fn construction_refuses_unusable_keys_without_printing_them() {
        let err = StripeInvoiceItems::new(Secret::new(""), None).unwrap_err();
        assert!(matches!(err, StripeBillingError::NoKey));
        let err = StripeInvoiceItems::new(Secret::new("sk_test_bad key"), None).unwrap_err();
        assert!(!err.to_string().contains("sk_test_bad"));
        let ok =
            StripeInvoiceItems::new(Secret::new("sk_test_123"), Some("http://127.0.0.1:12111"))
                .unwrap();
        assert!(!format!("{ok:?}").contains("sk_test_123"));
    }

    #[test]
    fn transport_failures_are_transient_and_the_key_is_scrubbed() {
        let key = Secret::new("sk_test_secret");
        for err in [
            StripeError::Timeout,
            StripeError::ClientError("connection reset".into()),
            StripeError::JSONDeserialize("error deserializing Stripe error".into()),
        ] {
            assert!(matches!(
                classify(err, DEFAULT_TIMEOUT, &key),
                ProviderError::Transient(_)
            ));
        }
        let echoed = classify(
            StripeError::ClientError("bad header Bearer sk_test_secret".into()),
            DEFAULT_TIMEOUT,
            &key,
        );
        assert!(!echoed.to_string().contains("sk_test_secret"), "{echoed}");
    }
}
