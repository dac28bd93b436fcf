//! The usage feed: the task between the proxy's [`CycleSink`] and the
//! `UsageAccumulator` actor, and what the app needs to set the accumulator
//! up and to flush it at shutdown.
//!
//! The forwarder takes the sink's folded totals on a timer ([`DRAIN_EVERY`])
//! rather than being told of each cycle: anything per cycle that crosses
//! threads (a wake-up, a channel message) costs proxy throughput on a small
//! machine (load-tests/RESULTS.md), while a take every 100 ms hands the
//! actor a few totals per busy session.
//!
//! It waits for the actor to take each batch (`send().await`, not
//! `do_send`), so when the actor falls behind, totals keep folding in the
//! sink instead of the actor's mailbox growing without bound. The shutdown
//! flush goes through the forwarder too, so every cycle recorded so far
//! reaches the actor before [`Flush`] does (an actor's mailbox is FIFO).

use std::time::{Duration, Instant};

use actix::Addr;
use dynabase_actors::{
    usage_accumulator::{
        BookConfig, Flush, FlushReport, FoldedBatch, FoldedCycles, Restore, Status, TakeUnwritten,
        UsageAccumulator, UsageConfig,
    },
    ClockAnchor,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{proxy::cycle_sink::CycleSource, settings::Settings, usage_spill::Spill};

/// Totals per message to the actor, at most.
const BATCH: usize = 4096;
/// How often the sink's totals are taken (see the module docs). Each take
/// wakes a thread, which costs ~0.1 ms of CPU on a virtual machine: at
/// 10 ms an idle replica spent 1 % of a core on it. Usage reaches the store
/// every `usage.flush_interval` (seconds), so 100 ms delays nothing.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// Records per store write, at most.
const MAX_BATCH_RECORDS: usize = 500;

/// Why the feed could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UsageFeedError {
    #[error("cannot generate a random id: {0}")]
    Random(#[from] getrandom::Error),
}

fn random_hex(bytes: usize) -> Result<String, UsageFeedError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The replica id as it may appear in a usage key: `:` separates the key's
/// parts, so anything but letters, digits, `-`, `_` and `.` becomes `-`.
fn key_safe(replica_id: &str) -> String {
    replica_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The accumulator's configuration from settings.
pub fn usage_config(
    settings: &Settings,
    anchor: ClockAnchor,
) -> Result<UsageConfig, UsageFeedError> {
    let usage = &settings.usage;
    Ok(UsageConfig {
        flush_interval: usage.flush_interval,
        warning_check_interval: usage.warning_check_interval,
        anchor,
        book: BookConfig {
            replica: key_safe(&settings.replica_id),
            // New per process start, so a restarted replica never reuses a key.
            boot: random_hex(4)?,
            factors: usage.factors,
            max_pending: usage.max_pending_records,
            max_batch: MAX_BATCH_RECORDS,
            retry_base: usage.flush_interval,
            retry_max: usage.retry_max_backoff,
        },
    })
}

struct FlushRequest {
    deadline: Instant,
    reply: oneshot::Sender<Option<FlushReport>>,
}

/// The running forwarder.
pub struct UsageFeed {
    control: mpsc::Sender<FlushRequest>,
    usage: Addr<UsageAccumulator>,
    spill: Spill,
    /// Removes the spill file once its restored records are written.
    restore_watch: Option<JoinHandle<()>>,
}

impl UsageFeed {
    /// Spawns the forwarder on the current runtime, and hands the
    /// accumulator what an earlier process kept in `spill`.
    pub fn start(source: CycleSource, usage: Addr<UsageAccumulator>, spill: Spill) -> Self {
        let (control, requests) = mpsc::channel(1);
        tokio::spawn(forward(source, usage.clone(), requests));
        let restore_watch = match spill.load() {
            Ok(records) if records.is_empty() => None,
            Ok(records) => {
                usage.do_send(Restore(records));
                Some(tokio::spawn(remove_when_written(
                    usage.clone(),
                    spill.clone(),
                )))
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the usage spill file");
                None
            }
        };
        Self {
            control,
            usage,
            spill,
            restore_watch,
        }
    }

    /// Delivers every event recorded so far, then has the accumulator write
    /// everything before `deadline`. `None` if the feed or actor is gone.
    pub async fn flush(&self, deadline: Instant) -> Option<FlushReport> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(FlushRequest { deadline, reply })
            .await
            .ok()?;
        answer.await.ok().flatten()
    }

    /// The shutdown flush; what the store could not take by `deadline` is
    /// kept in the spill file for the next start.
    pub async fn shutdown(self, deadline: Instant) {
        if let Some(watch) = &self.restore_watch {
            // The spill file is about to be replaced: nobody may remove it.
            watch.abort();
        }
        match self.flush(deadline).await {
            Some(report) if report.complete => {
                tracing::info!(records = report.records_written, "usage flushed");
                return;
            }
            Some(report) => tracing::warn!(
                pending_records = report.pending_records,
                open_buckets = report.open_buckets,
                "the store did not take all usage before the deadline; keeping it on disk"
            ),
            None => tracing::error!("usage flush failed: the accumulator is gone"),
        }
        let records = match self.usage.send(TakeUnwritten).await {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "usage lost: the accumulator is gone");
                return;
            }
        };
        match self.spill.keep(&records) {
            Ok(()) => tracing::warn!(
                records = records.len(),
                "usage kept on disk for the next start"
            ),
            Err(error) => {
                metrics::counter!("dynabase_usage_records_lost_total")
                    .increment(records.len() as u64);
                tracing::error!(%error, records = records.len(), "usage lost: cannot keep it on disk");
            }
        }
    }
}

/// Removes the spill file once the accumulator has written every restored
/// record (a crash before that restores them again: harmless, keyed).
async fn remove_when_written(usage: Addr<UsageAccumulator>, spill: Spill) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        match usage.send(Status).await {
            Ok(status) if status.restored_outstanding == 0 => {
                if let Err(error) = spill.remove() {
                    tracing::error!(%error, "cannot remove the usage spill file");
                }
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

async fn forward(
    source: CycleSource,
    usage: Addr<UsageAccumulator>,
    mut requests: mpsc::Receiver<FlushRequest>,
) {
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            Some(request) = requests.recv() => {
                deliver(&usage, source.take()).await;
                let report = usage.send(Flush { deadline: request.deadline }).await.ok();
                let _ = request.reply.send(report);
            }
            _ = tick.tick() => {
                // Checked first: once no sink is left, this take is the last.
                let open = source.is_open();
                deliver(&usage, source.take()).await;
                if !open {
                    break;
                }
            }
        }
    }
}

/// Hands the totals to the actor, waiting until it has taken them.
async fn deliver(usage: &Addr<UsageAccumulator>, mut totals: Vec<FoldedCycles>) {
    while !totals.is_empty() {
        let rest = totals.split_off(totals.len().min(BATCH));
        let batch = std::mem::replace(&mut totals, rest);
        let n = batch.iter().map(|f| f.cycles).sum();
        if let Err(e) = usage.send(FoldedBatch(batch)).await {
            lost(n, &e);
        }
    }
}

fn lost(events: u64, error: &actix::MailboxError) {
    metrics::counter!("dynabase_usage_events_lost_total").increment(events);
    tracing::error!(events, %error, "usage events lost: the accumulator did not take them");
}

#[cfg(test)]
mod tests {
    #[test]
    fn replica_ids_cannot_break_usage_keys() {
        assert_eq!(super::key_safe("5f2c-a1_b.c"), "5f2c-a1_b.c");
        assert_eq!(super::key_safe("a:b/c d"), "a-b-c-d");
    }
}
