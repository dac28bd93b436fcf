//! Where finished query cycles go: folded, on the thread that relayed them,
//! into per-(session, statement kind, usage window) totals that the usage
//! feed takes on a timer.
//!
//! Recording is on every query cycle's path, so it stays on the recording
//! thread: each thread that records gets its own tally, behind a lock only
//! the feed's periodic take ever contends for. Nothing crosses threads per
//! cycle (no channel message, no wake-up), and the usage accumulator gets a
//! handful of totals per drain instead of one event per cycle. Folding loses
//! nothing the accumulator keeps: it sums cycles and durations per window
//! anyway.
//!
//! A tally holds at most [`MAX_FOLDED`] totals; past it (the feed stalled
//! with thousands of busy sessions) cycles are lost, counted and logged.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError, Weak,
    },
};

use dynabase_actors::{
    domain::{
        cycle::{CycleEvent, StatementKind},
        usage::micros,
    },
    usage_accumulator::FoldedCycles,
    ClockAnchor,
};

/// Most distinct (session, kind, window) totals one thread's tally holds.
const MAX_FOLDED: usize = 65_536;

/// Keyed by the address of the session's labels (kept alive by the value,
/// so the address is not reused while the entry exists): folding a cycle
/// allocates nothing once its entry exists.
type Totals = HashMap<(usize, StatementKind, i64), FoldedCycles, foldhash::fast::RandomState>;

/// The recording side; cheap to clone.
#[derive(Clone)]
pub struct CycleSink {
    /// `None`: usage metering is off (`usage.enabled = false`).
    inner: Option<Arc<SinkShared>>,
}

/// The taking side, for the usage feed.
pub struct CycleSource {
    shared: Arc<SinkShared>,
}

struct SinkShared {
    /// Tells this sink's thread-local tallies from another sink's (tests run
    /// several proxies in one process).
    id: u64,
    anchor: ClockAnchor,
    tallies: Mutex<Vec<Arc<Tally>>>,
    lost: AtomicU64,
}

#[derive(Default)]
struct Tally(Mutex<Totals>);

/// A thread's tally for one sink.
struct LocalTally {
    sink_id: u64,
    sink: Weak<SinkShared>,
    tally: Arc<Tally>,
}

thread_local! {
    /// This thread's tally for each live sink it has recorded to.
    static TALLIES: RefCell<Vec<LocalTally>> = const { RefCell::new(Vec::new()) };
}

static NEXT_SINK_ID: AtomicU64 = AtomicU64::new(1);

impl std::fmt::Debug for CycleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CycleSink")
            .field("enabled", &self.inner.is_some())
            .finish_non_exhaustive()
    }
}

/// A sink and its source; `anchor` places cycles in their usage windows.
pub fn channel(anchor: ClockAnchor) -> (CycleSink, CycleSource) {
    let shared = Arc::new(SinkShared {
        id: NEXT_SINK_ID.fetch_add(1, Ordering::Relaxed),
        anchor,
        tallies: Mutex::new(Vec::new()),
        lost: AtomicU64::new(0),
    });
    (
        CycleSink {
            inner: Some(shared.clone()),
        },
        CycleSource { shared },
    )
}

impl CycleSink {
    /// A sink that records nothing.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Adds a finished cycle to this thread's tally; never waits on another
    /// thread except for the moment the feed takes the tally.
    pub fn record(&self, event: CycleEvent) {
        let Some(shared) = &self.inner else {
            return;
        };
        let window = shared.anchor.window_of(event.started);
        let duration_us = micros(event.duration);
        let key = (Arc::as_ptr(&event.session) as usize, event.kind, window.0);
        let folded = shared.with_local_tally(|tally| {
            let mut totals = tally.0.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(f) = totals.get_mut(&key) {
                f.cycles += 1;
                f.duration_us = f.duration_us.saturating_add(duration_us);
            } else if totals.len() < MAX_FOLDED {
                totals.insert(
                    key,
                    FoldedCycles {
                        session: event.session.clone(),
                        kind: event.kind,
                        window,
                        cycles: 1,
                        duration_us,
                    },
                );
            } else {
                return false;
            }
            true
        });
        if !folded {
            let lost = shared.lost.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("dynabase_usage_events_lost_total").increment(1);
            // Logged at powers of two: visible, without a line per cycle.
            if lost.is_power_of_two() {
                tracing::error!(
                    lost,
                    org = %event.session.org,
                    "usage events lost: the accumulator is far behind"
                );
            }
        }
    }
}

impl SinkShared {
    /// Runs `f` on the calling thread's tally, registered on first use.
    fn with_local_tally<R>(self: &Arc<Self>, f: impl FnOnce(&Tally) -> R) -> R {
        TALLIES.with_borrow_mut(|local| {
            if let Some(local) = local.iter().find(|l| l.sink_id == self.id) {
                return f(&local.tally);
            }
            // Tallies of sinks that are gone are of no further use.
            local.retain(|l| l.sink.strong_count() > 0);
            let tally = Arc::new(Tally::default());
            self.tallies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(tally.clone());
            local.push(LocalTally {
                sink_id: self.id,
                sink: Arc::downgrade(self),
                tally: tally.clone(),
            });
            f(&tally)
        })
    }
}

impl CycleSource {
    /// Whether any sink is left. Check it before [`Self::take`]: once it is
    /// false, what that take returns is everything that will ever come.
    pub fn is_open(&self) -> bool {
        Arc::strong_count(&self.shared) > 1
    }

    /// Takes every thread's totals.
    pub fn take(&self) -> Vec<FoldedCycles> {
        let mut taken = Vec::new();
        let mut tallies = self
            .shared
            .tallies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tallies.retain(|tally| {
            let totals =
                std::mem::take(&mut *tally.0.lock().unwrap_or_else(PoisonError::into_inner));
            taken.extend(totals.into_values());
            // Held by this list alone: its thread has exited.
            Arc::strong_count(tally) > 1
        });
        taken
    }

    /// Cycles lost so far.
    pub fn lost(&self) -> u64 {
        self.shared.lost.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dynabase_actors::{domain::cycle::SessionLabels, OrgId};

    use super::*;

    fn labels(org: &str) -> Arc<SessionLabels> {
        Arc::new(SessionLabels {
            org: OrgId::parse(org).expect("org id"),
            database: "app".into(),
            work_mem_mb: 4,
        })
    }

    fn event(session: &Arc<SessionLabels>, anchor: ClockAnchor, ms: u64) -> CycleEvent {
        CycleEvent {
            session: session.clone(),
            kind: StatementKind::Select,
            started: anchor.instant,
            duration: Duration::from_millis(ms),
        }
    }

    #[test]
    fn cycles_fold_per_session_and_window_across_threads() {
        let anchor = ClockAnchor::now();
        let (sink, source) = channel(anchor);
        let (acme, globex) = (labels("acme"), labels("globex"));
        for _ in 0..10 {
            sink.record(event(&acme, anchor, 3));
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..5 {
                    sink.record(event(&acme, anchor, 1));
                }
                sink.record(event(&globex, anchor, 2));
            });
        });
        let mut taken = source.take();
        taken.sort_by_key(|f| (f.session.org.to_string(), f.cycles));
        let got: Vec<_> = taken
            .iter()
            .map(|f| (f.session.org.to_string(), f.cycles, f.duration_us))
            .collect();
        assert_eq!(
            got,
            [
                ("acme".to_owned(), 5, 5_000),
                ("acme".to_owned(), 10, 30_000),
                ("globex".to_owned(), 1, 2_000)
            ]
        );
        assert!(taken
            .iter()
            .all(|f| f.window == anchor.window_of(anchor.instant)));
        // Taken means gone.
        assert!(source.take().is_empty());
        assert_eq!(source.lost(), 0);
    }

    #[test]
    fn the_source_sees_when_every_sink_is_gone() {
        let anchor = ClockAnchor::now();
        let (sink, source) = channel(anchor);
        let copy = sink.clone();
        sink.record(event(&labels("acme"), anchor, 1));
        drop(sink);
        assert!(source.is_open());
        drop(copy);
        assert!(!source.is_open());
        assert_eq!(source.take().len(), 1);
        CycleSink::disabled().record(event(&labels("acme"), anchor, 1));
    }

    #[test]
    fn another_sink_on_the_same_thread_has_its_own_tally() {
        let anchor = ClockAnchor::now();
        let (first, first_source) = channel(anchor);
        let (second, second_source) = channel(anchor);
        let acme = labels("acme");
        first.record(event(&acme, anchor, 1));
        second.record(event(&acme, anchor, 1));
        second.record(event(&acme, anchor, 1));
        let cycles = |taken: Vec<FoldedCycles>| taken.iter().map(|f| f.cycles).collect::<Vec<_>>();
        assert_eq!(cycles(first_source.take()), [1]);
        assert_eq!(cycles(second_source.take()), [2]);
    }
}
