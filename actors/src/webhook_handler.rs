//! `WebhookHandler`: accepts verified billing-provider events and applies
//! their effects, at least once and never twice.
//!
//! [`Accept`] writes the event to the store as a pending [`Job`] whose id is
//! `stripe:<event id>` — unique in the store, so a redelivered event is
//! recognised there and changes nothing — and answers at once; the effect is
//! then applied in the background (see `lifecycle::billing`). An effect that
//! fails leaves the job pending with a backoff; [`ProcessDue`] (sent by the
//! lifecycle scheduler's tick, on any replica, also after a restart) claims
//! and retries due jobs until they are applied. Effects are idempotent, so a
//! job that ran but whose outcome was not recorded runs again harmlessly.

use std::{sync::Arc, time::Duration};

use actix::{Handler, Message, ResponseFuture};
use serde::Serialize;

use crate::{
    domain::{
        billing::BillingEvent,
        jobs::{Backoff, Job, JobKind, JobStatus},
        records::{ProcessedEvent, Write},
        time::UnixMillis,
    },
    lifecycle::billing::{BillingEffects, EventResult},
    store::{Store, StoreError},
};

/// How long an event being applied is reserved for the replica applying it.
const LEASE: Duration = Duration::from_secs(30);
/// Events claimed per retry round.
const BATCH: usize = 32;
/// Failed effects are retried after 1 s, 2 s, 4 s, … at most 5 minutes
/// apart, for as long as it takes.
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

/// Why an event could not be accepted (nothing was recorded: the provider
/// should deliver it again).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot encode event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A verified event to record and apply.
#[derive(Debug, Message)]
#[rtype(result = "Result<Acceptance, WebhookError>")]
pub struct Accept {
    pub event: BillingEvent,
    pub now: UnixMillis,
}

/// What [`Accept`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Recorded; its effect is being applied.
    Queued,
    /// Seen before (a redelivery): nothing changed.
    Duplicate,
}

/// Retries the events whose effects are due at `now`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<EventsReport, WebhookError>")]
pub struct ProcessDue {
    pub now: UnixMillis,
}

/// What a retry round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventsReport {
    pub applied: usize,
    pub ignored: usize,
    pub retrying: usize,
}

/// The job id of a billing event: namespaced, so other job kinds' ids never
/// collide with the provider's event ids.
pub fn job_id(event_id: &str) -> String {
    format!("stripe:{event_id}")
}

/// The webhook_handler actor.
pub struct WebhookHandler {
    restarts: u32,
    store: Arc<dyn Store>,
    effects: BillingEffects,
}

impl WebhookHandler {
    pub fn new(store: Arc<dyn Store>, effects: BillingEffects) -> Self {
        Self {
            restarts: 0,
            store,
            effects,
        }
    }
}

crate::supervised_actor!(WebhookHandler, "webhook_handler");

impl Handler<Accept> for WebhookHandler {
    type Result = ResponseFuture<Result<Acceptance, WebhookError>>;

    fn handle(&mut self, msg: Accept, _: &mut Self::Context) -> Self::Result {
        let (store, effects) = (self.store.clone(), self.effects.clone());
        Box::pin(async move {
            let Accept { event, now } = msg;
            let job = Job::new(
                job_id(&event.id),
                JobKind::BillingEvent,
                None,
                serde_json::to_string(&event)?,
                now,
                // Reserved for the run started below; if this process dies
                // first, the job falls due for any replica when this passes.
                now.plus(LEASE),
            );
            match store.enqueue_job(&job).await? {
                Write::AlreadyApplied => {
                    metrics::counter!("dynabase_stripe_events_total", "outcome" => "duplicate")
                        .increment(1);
                    tracing::info!(event = %event.id, "redelivered event; nothing to do");
                    Ok(Acceptance::Duplicate)
                }
                Write::Applied => {
                    tracing::info!(event = %event.id, kind = %event.event_type, "event accepted");
                    tokio::spawn(async move {
                        let mut job = job;
                        job.attempts += 1;
                        run(&store, &effects, job, now).await;
                    });
                    Ok(Acceptance::Queued)
                }
            }
        })
    }
}

impl Handler<ProcessDue> for WebhookHandler {
    type Result = ResponseFuture<Result<EventsReport, WebhookError>>;

    fn handle(&mut self, msg: ProcessDue, _: &mut Self::Context) -> Self::Result {
        let (store, effects) = (self.store.clone(), self.effects.clone());
        Box::pin(async move {
            let now = msg.now;
            let jobs = store
                .claim_due_jobs(JobKind::BillingEvent, now, now.plus(LEASE), BATCH)
                .await?;
            let mut report = EventsReport::default();
            // In creation order: a subscription's updates apply oldest first.
            for job in jobs {
                match run(&store, &effects, job, now).await {
                    JobStatus::Done => report.applied += 1,
                    JobStatus::Ignored | JobStatus::Dead => report.ignored += 1,
                    JobStatus::Pending => report.retrying += 1,
                }
            }
            Ok(report)
        })
    }
}

/// Applies one claimed event job and records how it ended; returns the
/// job's new status.
async fn run(
    store: &Arc<dyn Store>,
    effects: &BillingEffects,
    mut job: Job,
    now: UnixMillis,
) -> JobStatus {
    let event: BillingEvent = match serde_json::from_str(&job.payload) {
        Ok(e) => e,
        Err(e) => {
            // Written by this code from a verified event; unreadable means
            // a bug or a corrupted store, which retrying will not fix.
            tracing::error!(job = %job.id, error = %e, "unreadable event job");
            job.finish(JobStatus::Dead, format!("unreadable: {e}"), now);
            return record(store, job).await;
        }
    };
    match effects.apply(&event, now).await {
        Ok(result) => {
            let (status, note, outcome) = match result {
                EventResult::Applied(note) => (JobStatus::Done, note, "applied"),
                EventResult::Ignored(note) => (JobStatus::Ignored, note, "ignored"),
            };
            metrics::counter!("dynabase_stripe_events_total", "outcome" => outcome).increment(1);
            tracing::info!(event = %event.id, kind = %event.event_type, outcome, %note, "event handled");
            // The permanent record of handled events (dedupe itself rides on
            // the job id); losing it to a store error changes nothing.
            if let Err(e) = store
                .mark_event_processed(&ProcessedEvent {
                    event_id: event.id.clone(),
                    event_type: event.event_type.clone(),
                    received_at: job.created_at,
                })
                .await
            {
                tracing::warn!(event = %event.id, error = %e, "could not record the processed event");
            }
            job.finish(status, note, now);
        }
        Err(e) => {
            metrics::counter!("dynabase_stripe_events_total", "outcome" => "retrying").increment(1);
            let at = now.plus(BACKOFF.after(job.attempts));
            tracing::warn!(event = %event.id, attempts = job.attempts, error = %e, retry_at = %at.to_rfc3339(), "event effect failed; will retry");
            job.retry_at(at, e.to_string(), now);
        }
    }
    record(store, job).await
}

async fn record(store: &Arc<dyn Store>, job: Job) -> JobStatus {
    let status = job.status;
    if let Err(e) = store.update_job(&job).await {
        // The job stays as claimed; when its lease ends it runs again.
        tracing::warn!(job = %job.id, error = %e, "could not record the job outcome; it will run again");
        return JobStatus::Pending;
    }
    status
}
