//! Notifications about tier changes, scheduled downgrades and payments: a
//! record in the store, plus — when the organization has a notification URL
//! — an outbound webhook delivered at least once.
//!
//! A delivery is a durable [`Job`] written before the notification record,
//! both keyed by the notification's key, so repeating `notify` after a
//! failure neither loses nor duplicates either. [`Notifier::deliver_due`]
//! sends due deliveries through the [`NotificationSender`] port (the binary's
//! HTTP adapter signs them) and retries failures with exponential backoff up
//! to `max_attempts`. Receivers should dedupe by the body's `id`.

use std::{sync::Arc, time::Duration};

use futures_util::{stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::{
    domain::{
        jobs::{Backoff, Job, JobKind, JobStatus},
        org_id::OrgId,
        organization::Organization,
        records::Notification,
        tier::Tier,
        time::UnixMillis,
    },
    lifecycle::sender::NotificationSender,
    store::{Store, StoreError},
};

/// Deliveries claimed per round.
const BATCH: usize = 64;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 8;
/// How long a claimed delivery is reserved for the replica sending it.
const LEASE: Duration = Duration::from_secs(60);

/// What an organization is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    TierChanged,
    DowngradeScheduled,
    DowngradeCancelled,
    PaymentFailed,
    PaymentRecovered,
    /// 80% or 100% of the tier's included vCPU-hours used.
    UsageWarning,
    /// A FREE org passed its included hours: the upgrade prompt.
    FreeOverage,
    /// 80% of the spend cap, a projection above it, or the cap reached.
    SpendCap,
    /// The payment provider refused a period's overage charge.
    BillingFailed,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::TierChanged => "tier_changed",
            NotificationKind::DowngradeScheduled => "downgrade_scheduled",
            NotificationKind::DowngradeCancelled => "downgrade_cancelled",
            NotificationKind::PaymentFailed => "payment_failed",
            NotificationKind::PaymentRecovered => "payment_recovered",
            NotificationKind::UsageWarning => "usage_warning",
            NotificationKind::FreeOverage => "free_overage",
            NotificationKind::SpendCap => "spend_cap",
            NotificationKind::BillingFailed => "billing_failed",
        }
    }
}

/// Why a notification could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot encode notification: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The JSON body an organization's notification URL receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundNotification {
    /// Unique per notification: receivers dedupe redeliveries by it.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: NotificationKind,
    pub org: OrgId,
    pub tier: Tier,
    pub message: String,
    pub created_at: UnixMillis,
}

/// A delivery job's payload.
#[derive(Debug, Serialize, Deserialize)]
struct Delivery {
    url: String,
    body: String,
}

/// What a delivery round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    pub delivered: usize,
    pub retrying: usize,
    pub abandoned: usize,
}

/// Queues the signed webhook of a notification when the organization has a
/// notification URL; once per `key` (the job id is derived from it), so
/// replicas announcing the same notification queue one delivery.
pub async fn queue_webhook(
    store: &dyn Store,
    org: &Organization,
    kind: NotificationKind,
    message: &str,
    key: &str,
    now: UnixMillis,
) -> Result<(), NotifierError> {
    let Some(url) = &org.lifecycle.notification_url else {
        return Ok(());
    };
    let body = serde_json::to_string(&OutboundNotification {
        id: key.to_owned(),
        kind,
        org: org.id.clone(),
        tier: org.tier,
        message: message.to_owned(),
        created_at: now,
    })?;
    let payload = serde_json::to_string(&Delivery {
        url: url.clone(),
        body,
    })?;
    let job = Job::new(
        format!("notify:{key}"),
        JobKind::NotificationDelivery,
        Some(org.id.clone()),
        payload,
        now,
        now,
    );
    store.enqueue_job(&job).await?;
    Ok(())
}

/// Records notifications and delivers their webhooks.
#[derive(Clone)]
pub struct Notifier {
    store: Arc<dyn Store>,
    backoff: Backoff,
    max_attempts: u32,
}

impl Notifier {
    pub fn new(store: Arc<dyn Store>, backoff: Backoff, max_attempts: u32) -> Self {
        Self {
            store,
            backoff,
            max_attempts: max_attempts.max(1),
        }
    }

    /// Records a notification for `org` once per `key`, and queues its
    /// webhook when the organization has a notification URL.
    pub async fn notify(
        &self,
        org: &Organization,
        kind: NotificationKind,
        message: String,
        key: String,
        now: UnixMillis,
    ) -> Result<(), NotifierError> {
        queue_webhook(self.store.as_ref(), org, kind, &message, &key, now).await?;
        self.store
            .add_notification(&Notification {
                key,
                org: org.id.clone(),
                kind: kind.as_str().to_owned(),
                message,
                created_at: now,
            })
            .await?;
        metrics::counter!("dynabase_notifications_total", "kind" => kind.as_str()).increment(1);
        Ok(())
    }

    /// Sends the deliveries due at `now`. A delivery whose outcome cannot be
    /// recorded is sent again when its lease ends (at least once).
    pub async fn deliver_due(
        &self,
        sender: &dyn NotificationSender,
        now: UnixMillis,
    ) -> Result<DeliveryReport, StoreError> {
        let jobs = self
            .store
            .claim_due_jobs(JobKind::NotificationDelivery, now, now.plus(LEASE), BATCH)
            .await?;
        let outcomes: Vec<Job> = stream::iter(jobs)
            .map(|job| self.deliver(sender, job, now))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut report = DeliveryReport::default();
        for job in outcomes {
            match job.status {
                JobStatus::Done => report.delivered += 1,
                JobStatus::Pending => report.retrying += 1,
                JobStatus::Dead | JobStatus::Ignored => report.abandoned += 1,
            }
            metrics::counter!("dynabase_notification_deliveries_total", "outcome" => job.status.as_str())
                .increment(1);
            self.store.update_job(&job).await?;
        }
        Ok(report)
    }

    async fn deliver(&self, sender: &dyn NotificationSender, mut job: Job, now: UnixMillis) -> Job {
        let delivery: Delivery = match serde_json::from_str(&job.payload) {
            Ok(d) => d,
            Err(e) => {
                job.finish(JobStatus::Dead, format!("unreadable delivery: {e}"), now);
                return job;
            }
        };
        match sender.send(&delivery.url, &delivery.body, now).await {
            Ok(()) => job.finish(JobStatus::Done, "delivered", now),
            Err(e) if e.is_permanent() || job.attempts >= self.max_attempts => {
                tracing::warn!(job = %job.id, attempts = job.attempts, error = %e, "notification delivery abandoned");
                job.finish(JobStatus::Dead, e.to_string(), now);
            }
            Err(e) => {
                let at = now.plus(self.backoff.after(job.attempts));
                tracing::info!(job = %job.id, attempts = job.attempts, error = %e, "notification delivery failed; will retry");
                job.retry_at(at, e.to_string(), now);
            }
        }
        job
    }
}
