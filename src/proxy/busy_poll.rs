//! Busy polling on a session thread.
//!
//! A proxied query crosses four sockets. When every hop sleeps in
//! `epoll_wait` and is woken by the next packet, each wake-up costs a
//! context switch, often on an idle (halted) CPU, which dominates the
//! latency a proxy adds at low concurrency. So after the relay reads from
//! either side, its thread keeps polling its I/O driver without sleeping
//! for up to `proxy.busy_poll`: the answer to a query just forwarded, or
//! the client's next query, is then picked up by a running thread.
//!
//! One spinner task per session thread does the polling: while there was a
//! relayed read within the budget it defers itself (`yield_now`), which
//! makes the single-threaded runtime poll its driver with a zero timeout
//! before running it again. Each round also yields the CPU to any other
//! runnable thread (`sched_yield`), so PostgreSQL or the client sharing the
//! CPU is not starved. With no recent reads the spinner parks, and idle
//! sessions cost nothing.
//!
//! Only a thread serving one session at a time spins: at most one session
//! in the middle of a query cycle, and the last [`SOLO_READS`] reads from
//! that same session. With several active sessions, events arrive
//! often enough on their own, and spinning would only take CPU from the
//! work those sessions wait for (measured in load-tests/RESULTS.md).
//!
//! State is per thread: sessions never leave the thread that accepted them
//! (see [`super::threads`]).

use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::{pin, Pin},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

thread_local! {
    /// Relayed reads on this thread so far.
    static READS: Cell<u64> = const { Cell::new(0) };
    /// The session id of the last relayed read.
    static LAST_READER: Cell<u64> = const { Cell::new(0) };
    /// Consecutive relayed reads from that session.
    static RUN: Cell<u32> = const { Cell::new(0) };
    /// Sessions on this thread with a query cycle in flight.
    static BUSY: Cell<usize> = const { Cell::new(0) };
    /// The spinner's waker while it is parked.
    static PARKED: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// Records a relayed read on this thread for session `reader` (its id), and
/// restarts busy polling.
pub fn note_read(reader: u64) {
    READS.set(READS.get().wrapping_add(1));
    let run = if LAST_READER.replace(reader) == reader {
        RUN.get().saturating_add(1)
    } else {
        1
    };
    RUN.set(run);
    // While sessions take turns the spinner would only park again: leave it
    // parked rather than poll it on every read.
    if solo() {
        wake_spinner();
    }
}

/// Two query cycles (a read each way) of one session in a row, with no
/// other session's read between them: that session is alone on the thread.
const SOLO_READS: u32 = 4;

/// One session alone on this thread, so spinning pays.
pub fn solo() -> bool {
    BUSY.get() <= 1 && RUN.get() >= SOLO_READS
}

fn wake_spinner() {
    if let Some(waker) = PARKED.with_borrow_mut(Option::take) {
        waker.wake();
    }
}

/// A session on this thread started (`true`) or finished (`false`) having
/// a query cycle in flight.
pub fn session_busy(busy: bool) {
    let now_busy = if busy {
        BUSY.get() + 1
    } else {
        BUSY.get().saturating_sub(1)
    };
    BUSY.set(now_busy);
    if !busy && solo() {
        wake_spinner();
    }
}

/// Polls the current thread's runtime without sleeping for up to `budget`
/// after each relayed read; never returns. Spawn one per session thread.
pub async fn spin(budget: Duration) {
    Spinner {
        budget,
        seen: READS.get(),
        since: Instant::now(),
    }
    .await
}

struct Spinner {
    budget: Duration,
    /// `READS` at the last poll, and when it was seen to change.
    seen: u64,
    since: Instant,
}

impl Future for Spinner {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let reads = READS.get();
        let now = Instant::now();
        if reads != self.seen {
            self.seen = reads;
            self.since = now;
        }
        if solo() && now.duration_since(self.since) < self.budget {
            std::thread::yield_now();
            // A deferred wake: the runtime polls its I/O driver with a zero
            // timeout, runs whatever became ready, then polls us again.
            let _ = pin!(tokio::task::yield_now()).poll(cx);
        } else {
            PARKED.with_borrow_mut(|parked| *parked = Some(cx.waker().clone()));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked() -> bool {
        PARKED.with_borrow(Option::is_some)
    }

    #[test]
    fn spins_after_reads_of_one_session_and_parks_when_idle_or_when_sessions_take_turns() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            tokio::spawn(spin(Duration::from_millis(2)));
            // No reads: it spins out its budget, then parks.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(parked());
            // Reads of one session wake it once that session is alone.
            for _ in 0..SOLO_READS - 1 {
                note_read(1);
                assert!(parked());
            }
            note_read(1);
            assert!(!parked());
            tokio::task::yield_now().await;
            assert!(!parked());
            // Another session's read: it parks while sessions take turns.
            note_read(2);
            tokio::task::yield_now().await;
            assert!(parked());
            note_read(1);
            assert!(parked());
            // One session alone again: spinning resumes.
            for _ in 0..SOLO_READS {
                note_read(1);
            }
            assert!(!parked());
            tokio::task::yield_now().await;
            assert!(!parked());
            // Two sessions mid-cycle: it parks, and reads leave it parked.
            session_busy(true);
            session_busy(true);
            tokio::task::yield_now().await;
            assert!(parked());
            note_read(1);
            assert!(parked());
            // Back to one busy session: spinning resumes.
            session_busy(false);
            assert!(!parked());
            session_busy(false);
        });
    }
}
