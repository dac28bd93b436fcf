//! `UsageAccumulator`: turns the query cycles the proxy observes into usage
//! records (vCPU-hours, GB-hours) per org × database × minute, writes them to
//! the store at least every flush interval, and raises usage warnings.
//!
//! The rules live in [`book`] (aggregation, keys, the bounded retry buffer)
//! and [`warnings`]; this file is the actor around them: timers, the one
//! store write in flight, and the [`Flush`] the app sends at shutdown.
//!
//! Supervision: handlers run fallible work through
//! [`guarded`](crate::supervision::guarded). A restart keeps the actor's
//! state (actix restarts the same value), and the batch that was being
//! written goes back to the pending records, so a restart loses nothing and
//! — writes being keyed — counts nothing twice.

pub mod book;
pub mod warnings;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{
    fut::wrap_future, Actor, ActorFutureExt, AsyncContext, Context, Handler, Message,
    MessageResult, ResponseActFuture, Supervised,
};
use tokio::sync::oneshot;

pub use self::book::{BookConfig, FoldedCycles, UsageBook};
use self::warnings::Warnings;
use crate::{
    billing::usage_policy::UsagePolicy,
    domain::{
        catalog::TierCatalog,
        cycle::CycleEvent,
        org_id::OrgId,
        records::{Period, UsageRecord, Write},
        time::{ClockAnchor, UnixMillis},
    },
    ping::{InjectFault, Ping, Pong},
    store::{Store, StoreError},
    supervision::guarded,
};

const NAME: &str = "usage_accumulator";
/// A store write that takes longer than this is treated as failed (and
/// retried under the same keys).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Individual cycles, one by one (for callers that do not fold).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CycleBatch(pub Vec<CycleEvent>);

/// Cycles already summed per session, kind and window: how the proxy
/// delivers them.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct FoldedBatch(pub Vec<FoldedCycles>);

/// Writes everything (open buckets included) before `deadline`; the app
/// sends it at shutdown, after the last session ended and the last cycles
/// were forwarded.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "FlushReport")]
pub struct Flush {
    pub deadline: Instant,
}

/// What a [`Flush`] achieved, and the accumulator's state for [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    /// Nothing is left to write.
    pub complete: bool,
    pub pending_records: usize,
    pub open_buckets: usize,
    pub records_written: u64,
    pub records_already_applied: u64,
    pub failed_writes: u64,
    /// Records handed back with [`Restore`] and not yet acknowledged.
    pub restored_outstanding: usize,
}

/// Takes everything not yet written out of the accumulator (after a
/// [`Flush`] that could not finish), for the app to keep on disk.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<UsageRecord>")]
pub struct TakeUnwritten;

/// Records an earlier process kept on disk, to be written under their keys.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Restore(pub Vec<UsageRecord>);

/// An org's total for a period changed outside the accumulator (an operator
/// adjustment): its usage warnings are checked at the next flush.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct UsageChanged {
    pub org: OrgId,
    pub period: Period,
}

/// Reads the accumulator's state.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "FlushReport")]
pub struct Status;

/// How the accumulator is set up.
#[derive(Debug, Clone)]
pub struct UsageConfig {
    pub flush_interval: Duration,
    pub warning_check_interval: Duration,
    pub book: BookConfig,
    pub anchor: ClockAnchor,
}

pub struct UsageAccumulator {
    restarts: u32,
    book: UsageBook,
    store: Arc<dyn Store>,
    catalog: Arc<TierCatalog>,
    flush_interval: Duration,
    warning_check_interval: Duration,
    warnings: Warnings,
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// FREE's overage policy and spend caps, run with each warning check.
    policy: Option<UsagePolicy>,
    records_written: u64,
    records_already_applied: u64,
    failed_writes: u64,
}

impl UsageAccumulator {
    pub fn new(store: Arc<dyn Store>, catalog: Arc<TierCatalog>, config: UsageConfig) -> Self {
        Self {
            restarts: 0,
            book: UsageBook::new(config.book, config.anchor),
            store,
            catalog,
            flush_interval: config.flush_interval,
            warning_check_interval: config.warning_check_interval,
            warnings: Warnings::default(),
            flush_waiters: Vec::new(),
            policy: None,
            records_written: 0,
            records_already_applied: 0,
            failed_writes: 0,
        }
    }

    /// Runs `policy` with every warning check.
    pub fn with_policy(mut self, policy: UsagePolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    fn report(&self) -> FlushReport {
        FlushReport {
            complete: self.book.is_drained(),
            pending_records: self.book.pending_records(),
            open_buckets: self.book.open_buckets(),
            records_written: self.records_written,
            records_already_applied: self.records_already_applied,
            failed_writes: self.failed_writes,
            restored_outstanding: self.book.restored_outstanding(),
        }
    }

    fn publish_gauges(&self) {
        metrics::gauge!("dynabase_usage_pending_records").set(self.book.pending_records() as f64);
        metrics::gauge!("dynabase_usage_open_buckets").set(self.book.open_buckets() as f64);
    }

    /// The periodic flush: cut what the buffer has room for, write, check
    /// warnings.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let book = &mut self.book;
        guarded(NAME, ctx, || book.cut(false));
        self.write_next(ctx);
        self.check_warnings(ctx);
        self.publish_gauges();
    }

    /// Starts writing the next batch, if one is due.
    fn write_next(&mut self, ctx: &mut Context<Self>) {
        let Some(batch) = self.book.next_batch(Instant::now()) else {
            return;
        };
        let store = self.store.clone();
        let write = async move {
            match tokio::time::timeout(WRITE_TIMEOUT, store.record_usage_batch(&batch)).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "usage write took longer than {WRITE_TIMEOUT:?}"
                ))),
            }
        };
        ctx.spawn(wrap_future(write).map(|result, act: &mut Self, ctx| act.written(result, ctx)));
    }

    fn written(&mut self, result: Result<Vec<Write>, StoreError>, ctx: &mut Context<Self>) {
        match result {
            Ok(writes) => {
                let written = self.book.batch_written(&writes);
                self.records_written += written.applied as u64;
                self.records_already_applied += written.already_applied as u64;
                metrics::counter!("dynabase_usage_records_written_total")
                    .increment(written.applied as u64);
                if written.already_applied > 0 {
                    // A retry after a lost acknowledgement: nothing counted twice.
                    metrics::counter!("dynabase_usage_records_already_applied_total")
                        .increment(written.already_applied as u64);
                    tracing::info!(
                        records = written.already_applied,
                        "usage records were already applied (retried write)"
                    );
                }
                self.warnings.usage_written(&written.records);
                // More may be waiting (more than one batch, or cut meanwhile).
                self.write_next(ctx);
            }
            Err(error) => {
                self.failed_writes += 1;
                let backoff = self.book.batch_failed(Instant::now());
                metrics::counter!("dynabase_usage_write_failures_total").increment(1);
                tracing::warn!(
                    %error,
                    pending = self.book.pending_records(),
                    failures = self.book.consecutive_failures(),
                    retry_in = ?backoff,
                    "usage write failed; records kept and retried under the same keys"
                );
                ctx.run_later(backoff, |act, ctx| act.write_next(ctx));
            }
        }
        self.publish_gauges();
        if self.book.is_drained() {
            for waiter in self.flush_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    fn check_warnings(&mut self, ctx: &mut Context<Self>) {
        if self.warnings.checking {
            return;
        }
        let due = self
            .warnings
            .due(Instant::now(), self.warning_check_interval);
        if due.is_empty() {
            return;
        }
        self.warnings.checking = true;
        let (store, catalog) = (self.store.clone(), self.catalog.clone());
        let policy = self.policy.clone();
        let checks = async move {
            let mut outcomes = Vec::with_capacity(due.len());
            for key in due {
                let result = warnings::check(
                    store.clone(),
                    catalog.clone(),
                    key.clone(),
                    policy.as_ref(),
                    UnixMillis::now(),
                )
                .await;
                outcomes.push((key, result));
            }
            outcomes
        };
        ctx.spawn(
            wrap_future(checks).map(|outcomes, act: &mut Self, _| {
                act.warnings.checking = false;
                for (key, result) in outcomes {
                    match result {
                        Ok(outcome) => {
                            for threshold in &outcome.announced {
                                metrics::counter!("dynabase_usage_warnings_total", "threshold" => threshold.to_string())
                                    .increment(1);
                                tracing::info!(org = %key.0, period = %key.1, threshold, "usage warning recorded");
                            }
                            act.warnings.watch(key.clone(), outcome.watching);
                            act.warnings.fired(key, &outcome.reached);
                        }
                        Err(error) => {
                            tracing::warn!(org = %key.0, %error, "usage warning check failed; will retry");
                            act.warnings.retry(key);
                        }
                    }
                }
            }),
        );
    }
}

impl Actor for UsageAccumulator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::debug!(actor = NAME, restarts = self.restarts, "started");
        // Also after a restart: the context's timers went with the old one.
        ctx.run_interval(self.flush_interval, |act, ctx| act.tick(ctx));
        if self.book.pending_records() > 0 {
            self.write_next(ctx);
        }
    }
}

impl Supervised for UsageAccumulator {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.restarts += 1;
        // The write future was dropped with the old context: its batch is
        // pending again (a write that did land answers AlreadyApplied).
        self.book.restore_in_flight();
        self.warnings.checking = false;
        tracing::warn!(actor = NAME, restarts = self.restarts, "restarting");
    }
}

impl Handler<Ping> for UsageAccumulator {
    type Result = MessageResult<Ping>;
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Pong {
            actor: NAME,
            restarts: self.restarts,
        })
    }
}

impl Handler<InjectFault> for UsageAccumulator {
    type Result = ();
    fn handle(&mut self, _: InjectFault, ctx: &mut Context<Self>) {
        guarded(NAME, ctx, || -> Result<(), &str> {
            panic!("injected fault")
        });
    }
}

impl Handler<CycleBatch> for UsageAccumulator {
    type Result = ();
    fn handle(&mut self, batch: CycleBatch, ctx: &mut Context<Self>) {
        let book = &mut self.book;
        guarded(NAME, ctx, || {
            for event in &batch.0 {
                book.record(event);
            }
            Ok::<_, std::convert::Infallible>(())
        });
    }
}

impl Handler<FoldedBatch> for UsageAccumulator {
    type Result = ();
    fn handle(&mut self, batch: FoldedBatch, ctx: &mut Context<Self>) {
        let book = &mut self.book;
        guarded(NAME, ctx, || {
            for folded in &batch.0 {
                book.record_folded(folded);
            }
            Ok::<_, std::convert::Infallible>(())
        });
    }
}

impl Handler<Flush> for UsageAccumulator {
    type Result = ResponseActFuture<Self, FlushReport>;

    fn handle(&mut self, flush: Flush, ctx: &mut Context<Self>) -> Self::Result {
        let book = &mut self.book;
        guarded(NAME, ctx, || book.cut(true));
        self.book.start_draining();
        self.write_next(ctx);
        let (tx, rx) = oneshot::channel();
        if self.book.is_drained() {
            let _ = tx.send(());
        } else {
            self.flush_waiters.push(tx);
        }
        let deadline = tokio::time::Instant::from_std(flush.deadline);
        Box::pin(
            wrap_future(tokio::time::timeout_at(deadline, rx)).map(|_, act: &mut Self, _| {
                let report = act.report();
                if !report.complete {
                    tracing::error!(
                        pending_records = report.pending_records,
                        open_buckets = report.open_buckets,
                        "usage not fully written before the shutdown deadline"
                    );
                }
                report
            }),
        )
    }
}

impl Handler<TakeUnwritten> for UsageAccumulator {
    type Result = MessageResult<TakeUnwritten>;
    fn handle(&mut self, _: TakeUnwritten, ctx: &mut Context<Self>) -> Self::Result {
        let book = &mut self.book;
        let records = guarded(NAME, ctx, || book.take_unwritten()).unwrap_or_default();
        self.publish_gauges();
        MessageResult(records)
    }
}

impl Handler<Restore> for UsageAccumulator {
    type Result = ();
    fn handle(&mut self, msg: Restore, ctx: &mut Context<Self>) {
        tracing::info!(records = msg.0.len(), "usage records restored from disk");
        self.book.restore(msg.0);
        self.write_next(ctx);
    }
}

impl Handler<UsageChanged> for UsageAccumulator {
    type Result = ();
    fn handle(&mut self, msg: UsageChanged, _: &mut Context<Self>) {
        self.warnings.changed((msg.org, msg.period));
    }
}

impl Handler<Status> for UsageAccumulator {
    type Result = MessageResult<Status>;
    fn handle(&mut self, _: Status, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.report())
    }
}

#[cfg(test)]
pub(crate) mod tests;
