//! Durable jobs: work that must happen at least once, across failures and
//! restarts — applying a verified webhook event, delivering a notification.
//!
//! A job is written to the store before anyone is told it was accepted, and
//! stays `Pending` until its runner records an end state. Its `id` is unique
//! in the store, which is also how redelivered webhook events are recognised.
//! A runner *claims* a due job by pushing `next_attempt_at` forward (a lease):
//! if the runner dies, the job falls due again when the lease ends and any
//! replica picks it up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{org_id::OrgId, time::UnixMillis};

/// What a job does; each kind has one runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A verified billing-provider event whose effect is to be applied.
    BillingEvent,
    /// An outbound notification webhook to deliver.
    NotificationDelivery,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::BillingEvent => "billing_event",
            JobKind::NotificationDelivery => "notification_delivery",
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Not done yet: runs when `next_attempt_at` has passed.
    Pending,
    /// Its effect was applied.
    Done,
    /// Deliberately not applied (e.g. an out-of-order event); `note` says why.
    Ignored,
    /// Given up after too many attempts; `note` holds the last error.
    Dead,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Done => "done",
            JobStatus::Ignored => "ignored",
            JobStatus::Dead => "dead",
        }
    }
}

/// One unit of at-least-once work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique in the store: a second enqueue with the same id is reported as
    /// [`Write::AlreadyApplied`](super::records::Write) and changes nothing.
    pub id: String,
    pub kind: JobKind,
    /// The organization concerned, when known.
    pub org: Option<OrgId>,
    /// JSON the job's runner understands.
    pub payload: String,
    pub status: JobStatus,
    /// Attempts started so far (counted when claimed).
    pub attempts: u32,
    /// Not run before this instant; also the end of a claim's lease.
    pub next_attempt_at: UnixMillis,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// What it did, why it was ignored, or the last error.
    pub note: Option<String>,
}

impl Job {
    /// A new pending job, due at `due`.
    pub fn new(
        id: String,
        kind: JobKind,
        org: Option<OrgId>,
        payload: String,
        now: UnixMillis,
        due: UnixMillis,
    ) -> Self {
        Self {
            id,
            kind,
            org,
            payload,
            status: JobStatus::Pending,
            attempts: 0,
            next_attempt_at: due,
            created_at: now,
            updated_at: now,
            note: None,
        }
    }

    /// Ends the job in `status` with `note`.
    pub fn finish(&mut self, status: JobStatus, note: impl Into<String>, now: UnixMillis) {
        self.status = status;
        self.note = Some(note.into());
        self.updated_at = now;
    }

    /// Keeps the job pending until `at`, remembering why.
    pub fn retry_at(&mut self, at: UnixMillis, error: impl Into<String>, now: UnixMillis) {
        self.status = JobStatus::Pending;
        self.next_attempt_at = at;
        self.note = Some(error.into());
        self.updated_at = now;
    }
}

/// Exponential backoff: `base × 2^(attempts−1)`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after the `attempts`-th failed attempt (1-based).
    pub fn after(&self, attempts: u32) -> Duration {
        let exponent = attempts.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let waits: Vec<u64> = (1..=8).map(|n| b.after(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.after(0).as_secs(), 1);
        assert_eq!(b.after(u32::MAX).as_secs(), 60);
    }
}
