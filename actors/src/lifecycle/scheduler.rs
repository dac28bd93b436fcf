//! `LifecycleScheduler`: the actor that moves time forward for the tier
//! lifecycle. Each [`Tick`] carries the time it stands for — the binary sends
//! the wall clock every `lifecycle.tick_interval`; tests and operators pass a
//! time in — and, for that time:
//!
//! 1. applies the scheduled downgrades that are due, and moves organizations
//!    past due beyond the payment grace to FREE;
//! 2. has the [`WebhookHandler`] retry billing events whose effects are due;
//! 3. delivers due outbound notifications.
//!
//! Everything it acts on is in the store, so scheduled changes survive
//! restarts, and several replicas ticking at once are harmless (changes are
//! compare-and-set; jobs are claimed). Ticks run one at a time.

use std::sync::Arc;

use actix::{ActorFutureExt, Addr, AtomicResponse, Handler, Message, WrapFuture};
use serde::Serialize;

use crate::{
    domain::{org_id::OrgId, tier::Tier, time::UnixMillis},
    lifecycle::{
        changer::{Outcome, TierChanger},
        notifier::{DeliveryReport, Notifier},
        policy,
        sender::NotificationSender,
    },
    webhook_handler::{EventsReport, ProcessDue, WebhookHandler},
};

/// Runs the lifecycle for the instant `now`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "TickReport")]
pub struct Tick {
    pub now: UnixMillis,
}

/// One tier moved by a tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedChange {
    pub org: OrgId,
    pub from: Tier,
    pub to: Tier,
}

/// What a tick did; failures are reported, not fatal (the next tick retries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TickReport {
    pub now: UnixMillis,
    pub applied: Vec<AppliedChange>,
    pub events: EventsReport,
    pub deliveries: DeliveryReport,
    pub errors: Vec<String>,
}

/// What the scheduler works with.
#[derive(Clone)]
pub struct SchedulerDeps {
    pub changer: TierChanger,
    pub notifier: Notifier,
    pub sender: Arc<dyn NotificationSender>,
    pub webhooks: Addr<WebhookHandler>,
}

/// The lifecycle_scheduler actor.
pub struct LifecycleScheduler {
    restarts: u32,
    deps: SchedulerDeps,
}

impl LifecycleScheduler {
    pub fn new(deps: SchedulerDeps) -> Self {
        Self { restarts: 0, deps }
    }
}

crate::supervised_actor!(LifecycleScheduler, "lifecycle_scheduler");

impl Handler<Tick> for LifecycleScheduler {
    // Atomic: the next tick waits until this one is done.
    type Result = AtomicResponse<Self, TickReport>;

    fn handle(&mut self, msg: Tick, _: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        AtomicResponse::new(Box::pin(
            run_tick(deps, msg.now)
                .into_actor(self)
                .map(|report, _, _| report),
        ))
    }
}

async fn run_tick(deps: SchedulerDeps, now: UnixMillis) -> TickReport {
    let mut report = TickReport {
        now,
        applied: Vec::new(),
        events: EventsReport::default(),
        deliveries: DeliveryReport::default(),
        errors: Vec::new(),
    };
    let policy = *deps.changer.policy();
    let past_due_since_by = now.minus(policy.payment_failure_grace);
    match deps
        .changer
        .store()
        .orgs_with_lifecycle_due(now, past_due_since_by)
        .await
    {
        Ok(orgs) => {
            for org in orgs
                .iter()
                .filter(|o| policy::needs_attention(o, &policy, now))
            {
                match deps.changer.apply_due(&org.id, now).await {
                    Ok((_, Outcome::Applied { from, to })) => report.applied.push(AppliedChange {
                        org: org.id.clone(),
                        from,
                        to,
                    }),
                    Ok(_) => {}
                    Err(e) => report.errors.push(format!("{}: {e}", org.id)),
                }
            }
        }
        Err(e) => report
            .errors
            .push(format!("listing organizations with something due: {e}")),
    }
    match deps.webhooks.send(ProcessDue { now }).await {
        Ok(Ok(events)) => report.events = events,
        Ok(Err(e)) => report.errors.push(format!("billing events: {e}")),
        Err(e) => report.errors.push(format!("webhook handler: {e}")),
    }
    match deps.notifier.deliver_due(deps.sender.as_ref(), now).await {
        Ok(deliveries) => report.deliveries = deliveries,
        Err(e) => report.errors.push(format!("notification deliveries: {e}")),
    }
    for error in &report.errors {
        tracing::warn!(%error, "lifecycle tick: step failed; the next tick retries");
    }
    report
}
