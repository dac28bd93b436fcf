//! Query-cycle metrics (`dynabase_proxy_query_cycles_total` and
//! `dynabase_proxy_query_cycle_seconds`, by tier), tallied on the session
//! thread and published from it on a timer.
//!
//! Updating the shared counter and histogram on every cycle made the
//! threads serving one tier take turns owning the same cache lines: at 32
//! pgbench clients on two proxy threads that cost 0.3–0.6 µs of CPU per
//! cycle (load-tests/RESULTS.md). A cycle now adds to a thread-local tally,
//! and the thread's publisher task hands the tally to the recorder at most
//! [`PUBLISH_EVERY`] later, so the shared series are touched a few times a
//! second per thread. The publisher sleeps while nothing is pending; a
//! session thread publishes what is left when it stops ([`publish_now`]).

use std::{
    cell::RefCell,
    future::poll_fn,
    task::{Poll, Waker},
    time::Duration,
};

use dynabase_actors::Tier;

/// Longest a finished cycle waits before the recorder sees it.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// Samples one thread holds before it publishes on the spot (its publisher
/// is not getting to run).
const MAX_PENDING: usize = 65_536;

/// One tier's cycles since the last publish.
struct TierTally {
    tier: Tier,
    cycles: metrics::Counter,
    seconds: metrics::Histogram,
    pending: Vec<f64>,
}

impl TierTally {
    fn new(tier: Tier) -> Self {
        let label = tier.as_str();
        Self {
            tier,
            cycles: metrics::counter!("dynabase_proxy_query_cycles_total", "tier" => label),
            seconds: metrics::histogram!("dynabase_proxy_query_cycle_seconds", "tier" => label),
            pending: Vec::new(),
        }
    }

    fn publish(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.cycles.increment(self.pending.len() as u64);
        for seconds in self.pending.drain(..) {
            self.seconds.record(seconds);
        }
        // Keep what a busy thread needs; give back what a burst took.
        self.pending.shrink_to(MAX_PENDING / 16);
    }
}

/// A thread's tallies, one per tier it has served.
#[derive(Default)]
struct Tally {
    tiers: Vec<TierTally>,
    /// The publisher's waker while it sleeps with nothing pending.
    publisher: Option<Waker>,
}

impl Tally {
    fn publish(&mut self) {
        for tier in &mut self.tiers {
            tier.publish();
        }
    }
}

thread_local! {
    static TALLY: RefCell<Tally> = RefCell::new(Tally::default());
}

/// Counts a finished query cycle of a session on `tier` that took `duration`.
pub fn record(tier: Tier, duration: Duration) {
    TALLY.with_borrow_mut(|tally| {
        let index = match tally.tiers.iter().position(|t| t.tier == tier) {
            Some(index) => index,
            None => {
                tally.tiers.push(TierTally::new(tier));
                tally.tiers.len() - 1
            }
        };
        let pending = &mut tally.tiers[index].pending;
        pending.push(duration.as_secs_f64());
        if pending.len() >= MAX_PENDING {
            tally.tiers[index].publish();
        }
        if let Some(publisher) = tally.publisher.take() {
            publisher.wake();
        }
    });
}

/// Hands this thread's tally to the recorder. Not from a thread-local
/// destructor: recording a histogram sample reads other thread-locals.
pub fn publish_now() {
    TALLY.with_borrow_mut(Tally::publish);
}

/// Publishes this thread's tally: now, then [`PUBLISH_EVERY`] after each
/// cycle recorded since, sleeping while nothing is pending; never returns.
/// Spawn one per session thread (on that thread's runtime).
pub async fn publish() {
    loop {
        publish_now();
        // Sleep until a cycle is recorded, then give later ones time to
        // join it.
        poll_fn(|cx| {
            TALLY.with_borrow_mut(|tally| {
                if tally.tiers.iter().any(|t| !t.pending.is_empty()) {
                    Poll::Ready(())
                } else {
                    tally.publisher = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        })
        .await;
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn cycles_reach_the_recorder_after_the_publish_interval_not_per_cycle() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            runtime.block_on(async {
                tokio::spawn(publish());
                tokio::task::yield_now().await;
                record(Tier::Pro, Duration::from_millis(2));
                record(Tier::Pro, Duration::from_millis(4));
                record(Tier::Free, Duration::from_millis(1));
                // Not yet: the tally is still on this thread.
                tokio::task::yield_now().await;
                let text = handle.render();
                assert_eq!(
                    line(&text, "dynabase_proxy_query_cycles_total{tier=\"pro\"}"),
                    Some("dynabase_proxy_query_cycles_total{tier=\"pro\"} 0"),
                    "{text}"
                );
                tokio::time::sleep(PUBLISH_EVERY + Duration::from_millis(1)).await;
                let text = handle.render();
                assert_eq!(
                    line(&text, "dynabase_proxy_query_cycles_total{tier=\"pro\"}"),
                    Some("dynabase_proxy_query_cycles_total{tier=\"pro\"} 2"),
                    "{text}"
                );
                assert_eq!(
                    line(&text, "dynabase_proxy_query_cycles_total{tier=\"free\"}"),
                    Some("dynabase_proxy_query_cycles_total{tier=\"free\"} 1"),
                    "{text}"
                );
                assert_eq!(
                    line(
                        &text,
                        "dynabase_proxy_query_cycle_seconds_sum{tier=\"pro\"}"
                    ),
                    Some("dynabase_proxy_query_cycle_seconds_sum{tier=\"pro\"} 0.006"),
                    "{text}"
                );
                // Nothing pending: the publisher sleeps, and wakes for the next cycle.
                tokio::time::sleep(PUBLISH_EVERY * 4).await;
                record(Tier::Pro, Duration::from_millis(1));
                tokio::time::sleep(PUBLISH_EVERY + Duration::from_millis(1)).await;
                let text = handle.render();
                assert_eq!(
                    line(&text, "dynabase_proxy_query_cycles_total{tier=\"pro\"}"),
                    Some("dynabase_proxy_query_cycles_total{tier=\"pro\"} 3"),
                    "{text}"
                );
            });
        });
    }
}
