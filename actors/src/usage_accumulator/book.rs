//! `UsageBook`: the accumulator's state and rules, without the actor, so they
//! can be tested (and benchmarked) with time passed in.
//!
//! Three stages, each bounded:
//!
//! 1. **open** — exact integer totals per org × database × window (UTC minute
//!    of the cycle's start). Recording an event is two hash lookups by
//!    borrowed keys and a few additions: no allocation once the bucket
//!    exists.
//! 2. **pending** — [`UsageRecord`]s cut from open buckets at each flush, each
//!    with its idempotency key `replica:org:database:window:seq`. A record
//!    keeps its key until the store acknowledges it, so a retry after a lost
//!    acknowledgement is reported `AlreadyApplied` instead of counted twice.
//!    At most `max_pending` records wait; when full, flushes leave buckets
//!    open, where usage keeps aggregating (bounded by org × database ×
//!    minute) instead of being dropped.
//! 3. **in flight** — one batch at a time is being written; it stays here
//!    (not only in the write future) so an actor restart puts it back.
//!
//! `seq` is `<boot>-<n>`: `boot` is random per process start, so a replica
//! that restarts with the same id never reuses a key for new usage.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::domain::{
    catalog::UsageFactors,
    cycle::{CycleEvent, SessionLabels, StatementKind},
    org_id::OrgId,
    records::{Period, UsageRecord, Write},
    time::{ClockAnchor, UnixMillis},
    usage::{micros, UsageError, UsageTotals},
};

/// What the book is told at start.
#[derive(Debug, Clone)]
pub struct BookConfig {
    /// Stable id of this replica (no `:`).
    pub replica: String,
    /// Random per process start.
    pub boot: String,
    pub factors: UsageFactors,
    /// Records cut but not yet acknowledged, at most.
    pub max_pending: usize,
    /// Records per store write, at most.
    pub max_batch: usize,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

/// Cycles the proxy folded together: same session labels, statement kind
/// and window.
#[derive(Debug, Clone)]
pub struct FoldedCycles {
    pub session: Arc<SessionLabels>,
    pub kind: StatementKind,
    pub window: UnixMillis,
    pub cycles: u64,
    pub duration_us: u64,
}

/// The outcome of one acknowledged batch.
#[derive(Debug, Default)]
pub struct Written {
    pub applied: usize,
    pub already_applied: usize,
    pub records: Vec<UsageRecord>,
}

/// Open windows of one org's database: usually one or two, so a vector.
type Windows = Vec<(i64, UsageTotals)>;

#[derive(Debug)]
pub struct UsageBook {
    config: BookConfig,
    anchor: ClockAnchor,
    open: HashMap<OrgId, HashMap<String, Windows>>,
    open_buckets: usize,
    pending: VecDeque<UsageRecord>,
    in_flight: Vec<UsageRecord>,
    seq: u64,
    failures: u32,
    next_attempt: Option<Instant>,
    /// Shutting down: retry at the base interval, never longer.
    draining: bool,
    /// Keys of records handed back by [`Self::restore`] and not yet
    /// acknowledged.
    restored: HashSet<String>,
}

impl UsageBook {
    pub fn new(config: BookConfig, anchor: ClockAnchor) -> Self {
        Self {
            config,
            anchor,
            open: HashMap::new(),
            open_buckets: 0,
            pending: VecDeque::new(),
            in_flight: Vec::new(),
            seq: 0,
            failures: 0,
            next_attempt: None,
            draining: false,
            restored: HashSet::new(),
        }
    }

    /// Adds one finished cycle.
    #[inline]
    pub fn record(&mut self, event: &CycleEvent) {
        let window = self.anchor.window_of(event.started).0;
        let duration_us = micros(event.duration);
        let labels = &event.session;
        self.with_bucket(labels, window, |t| {
            t.add(event.kind, 1, duration_us, labels.work_mem_mb)
        });
    }

    /// Adds cycles the proxy folded together.
    pub fn record_folded(&mut self, folded: &FoldedCycles) {
        let labels = &folded.session;
        self.with_bucket(labels, folded.window.minute_start().0, |t| {
            t.add(
                folded.kind,
                folded.cycles,
                folded.duration_us,
                labels.work_mem_mb,
            )
        });
    }

    fn with_bucket(
        &mut self,
        labels: &SessionLabels,
        window: i64,
        add: impl FnOnce(&mut UsageTotals),
    ) {
        // Looked up by borrowed keys; owned keys are made only for a new
        // org or database.
        let added = match self.open.get_mut(&labels.org) {
            Some(dbs) => match dbs.get_mut(labels.database.as_str()) {
                Some(windows) => add_to_window(windows, window, add),
                None => {
                    let mut windows = Windows::new();
                    add_to_window(&mut windows, window, add);
                    dbs.insert(labels.database.clone(), windows);
                    true
                }
            },
            None => {
                let mut windows = Windows::new();
                add_to_window(&mut windows, window, add);
                let dbs = HashMap::from([(labels.database.clone(), windows)]);
                self.open.insert(labels.org.clone(), dbs);
                true
            }
        };
        if added {
            self.open_buckets += 1;
        }
    }

    /// Turns open buckets into keyed records: all of them when `all` (at
    /// shutdown), otherwise as many as the pending buffer has room for.
    /// Returns how many records were cut.
    pub fn cut(&mut self, all: bool) -> Result<usize, UsageError> {
        if self.open_buckets == 0 {
            return Ok(0);
        }
        let waiting = self.pending.len() + self.in_flight.len();
        let mut room = if all {
            usize::MAX
        } else {
            self.config.max_pending.saturating_sub(waiting)
        };
        if room == 0 {
            return Ok(0);
        }
        self.seq += 1;
        let seq = format!("{}-{}", self.config.boot, self.seq);
        let mut cut = Vec::new();
        'orgs: for (org, dbs) in &mut self.open {
            for (database, windows) in dbs.iter_mut() {
                while let Some((window, totals)) = windows.pop() {
                    cut.push((org.clone(), database.clone(), window, totals));
                    room -= 1;
                    if room == 0 {
                        break 'orgs;
                    }
                }
            }
        }
        self.open.retain(|_, dbs| {
            dbs.retain(|_, windows| !windows.is_empty());
            !dbs.is_empty()
        });
        self.open_buckets -= cut.len();
        let n = cut.len();
        let mut failed = None;
        for (org, database, window, totals) in cut {
            if failed.is_none() {
                match self.make_record(&org, &database, window, &totals, &seq) {
                    Ok(record) => {
                        self.pending.push_back(record);
                        continue;
                    }
                    Err(e) => failed = Some(e),
                }
            }
            // Cannot happen for real durations (it takes ~10^22 hours to
            // overflow); keep the totals open rather than lose them.
            self.reopen(org, database, window, totals);
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    fn reopen(&mut self, org: OrgId, database: String, window: i64, totals: UsageTotals) {
        let windows = self
            .open
            .entry(org)
            .or_default()
            .entry(database)
            .or_default();
        if add_to_window(windows, window, |t| t.merge(&totals)) {
            self.open_buckets += 1;
        }
    }

    fn make_record(
        &self,
        org: &OrgId,
        database: &str,
        window: i64,
        totals: &UsageTotals,
        seq: &str,
    ) -> Result<UsageRecord, UsageError> {
        let window_start = UnixMillis(window);
        Ok(UsageRecord {
            key: format!("{}:{org}:{database}:{window}:{seq}", self.config.replica),
            period: Period::containing(window_start),
            org: org.clone(),
            database: database.to_owned(),
            window_start,
            query_cycles: totals.query_cycles,
            duration_us: totals.duration_us(),
            vcpu_hours: totals.vcpu_hours(&self.config.factors)?,
            gb_hours: totals.gb_hours()?,
        })
    }

    /// The next batch to write, if none is in flight, there is one, and any
    /// backoff has passed. The records stay in the book until acknowledged.
    pub fn next_batch(&mut self, now: Instant) -> Option<Vec<UsageRecord>> {
        if !self.in_flight.is_empty() || self.pending.is_empty() {
            return None;
        }
        if self.next_attempt.is_some_and(|at| now < at) {
            return None;
        }
        let n = self.pending.len().min(self.config.max_batch.max(1));
        self.in_flight = self.pending.drain(..n).collect();
        Some(self.in_flight.clone())
    }

    /// The store acknowledged the batch in flight (`writes` in its order).
    pub fn batch_written(&mut self, writes: &[Write]) -> Written {
        let records = std::mem::take(&mut self.in_flight);
        if !self.restored.is_empty() {
            for r in &records {
                self.restored.remove(&r.key);
            }
        }
        let already_applied = writes
            .iter()
            .filter(|w| **w == Write::AlreadyApplied)
            .count();
        self.failures = 0;
        self.next_attempt = None;
        Written {
            applied: records.len().saturating_sub(already_applied),
            already_applied,
            records,
        }
    }

    /// The batch in flight failed: it goes back to the front, and the next
    /// attempt waits an exponentially growing backoff, returned.
    pub fn batch_failed(&mut self, now: Instant) -> Duration {
        self.restore_in_flight();
        self.failures = self.failures.saturating_add(1);
        let doubling = 2u32.saturating_pow(self.failures.saturating_sub(1).min(16));
        let mut backoff = self
            .config
            .retry_base
            .saturating_mul(doubling)
            .min(self.config.retry_max);
        if self.draining {
            backoff = backoff.min(self.config.retry_base);
        }
        self.next_attempt = Some(now + backoff);
        backoff
    }

    /// Puts the batch in flight back in front of the pending records (its
    /// write failed, or the actor restarted while it ran).
    pub fn restore_in_flight(&mut self) {
        for record in self.in_flight.drain(..).rev() {
            self.pending.push_front(record);
        }
    }

    /// Everything not yet acknowledged, open windows included (cut now),
    /// taken out of the book: what the app keeps on disk when the store
    /// could not take it before exit.
    pub fn take_unwritten(&mut self) -> Result<Vec<UsageRecord>, UsageError> {
        self.cut(true)?;
        self.restore_in_flight();
        Ok(self.pending.drain(..).collect())
    }

    /// Records kept on disk by an earlier process: written again under
    /// their own keys (so a record that did land is answered
    /// `AlreadyApplied`, not counted twice).
    pub fn restore(&mut self, records: Vec<UsageRecord>) {
        self.restored.extend(records.iter().map(|r| r.key.clone()));
        self.pending.extend(records);
    }

    /// Restored records not yet acknowledged.
    pub fn restored_outstanding(&self) -> usize {
        self.restored.len()
    }

    /// From now on, retry at the base interval (shutdown).
    pub fn start_draining(&mut self) {
        self.draining = true;
        self.next_attempt = None;
    }

    /// Records cut and not yet acknowledged (in flight included).
    pub fn pending_records(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    pub fn open_buckets(&self) -> usize {
        self.open_buckets
    }

    /// Nothing left to write.
    pub fn is_drained(&self) -> bool {
        self.open_buckets == 0 && self.pending_records() == 0
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }
}

/// Adds to the window's totals; returns whether a new bucket was made.
#[inline]
fn add_to_window(windows: &mut Windows, window: i64, add: impl FnOnce(&mut UsageTotals)) -> bool {
    // The current window is the last one pushed; search from the end.
    if let Some((_, totals)) = windows.iter_mut().rev().find(|(w, _)| *w == window) {
        add(totals);
        return false;
    }
    let mut totals = UsageTotals::default();
    add(&mut totals);
    windows.push((window, totals));
    true
}
