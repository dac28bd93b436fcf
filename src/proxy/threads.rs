//! Session threads: each runs its own single-threaded tokio runtime with its
//! own I/O driver, and a session stays on the thread it was given.
//!
//! On a work-stealing runtime the thread blocked in `epoll_wait` is often
//! not the one that runs the woken session, so a query cycle pays futex
//! wake-ups and cross-CPU hand-offs; one runtime per thread keeps a
//! session's reads, writes and wake-ups on one thread, as PgBouncer does
//! with its single event loop. It also lets an idle thread busy-poll its own
//! driver ([`super::busy_poll`]) and tally query-cycle metrics for a task on
//! it to publish ([`super::cycle_metrics`]).
//!
//! With `proxy.event_loop`, each thread also has a companion event-loop
//! thread ([`super::event_loop`]) that takes over its established sessions
//! that need no async work; the session's task stays here.
//!
//! Connections are accepted elsewhere (one listener) and handed to the
//! first thread with fewer than `pack` live sessions, or, once every thread
//! has that many, to the one with the fewest. Packing keeps light load on
//! one event loop, which then handles several sessions' events per wake-up;
//! spreading from the start made every thread sleep and wake for a few
//! sessions each (on 2 cores at 8 pgbench clients: 28–34 µs of CPU per
//! transaction against 23–27 µs on one thread, load-tests/RESULTS.md).

use std::{
    future::Future,
    io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::Duration,
};

use tokio::{runtime::Handle, sync::oneshot};

use super::{
    busy_poll, cycle_metrics,
    event_loop::{EventLoop, EventLoopError},
};

#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    #[error("cannot start proxy session thread {index}: {source}")]
    Start { index: usize, source: io::Error },
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
}

/// The pool of session threads.
pub struct SessionThreads {
    workers: Vec<Worker>,
    /// Live sessions a thread takes before the next one gets any.
    pack: usize,
    /// Where the search for the least-loaded thread starts (spreads ties).
    next: AtomicUsize,
}

struct Worker {
    handle: Handle,
    live: Arc<AtomicUsize>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The companion event loop (`proxy-loop-N`), when enabled.
    event_loop: Option<(EventLoop, Mutex<Option<JoinHandle<()>>>)>,
}

/// Counts a session as live on its thread until dropped.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SessionThreads {
    /// Starts `count` (≥ 1) threads named `proxy-N`; see the module docs
    /// for `pack`. With `event_loops`, each gets a companion event-loop
    /// thread that its established sessions may move to
    /// ([`super::event_loop`]).
    pub fn start(
        count: usize,
        pack: usize,
        busy_poll: Duration,
        event_loops: bool,
    ) -> Result<Self, ThreadsError> {
        let mut workers = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let start = |source| ThreadsError::Start { index, source };
            let event_loop = if event_loops {
                Some(EventLoop::start(format!("proxy-loop-{index}"), busy_poll)?)
            } else {
                None
            };
            let companion = event_loop.as_ref().map(|(l, _)| l.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(start)?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-{index}"))
                .spawn(move || {
                    if let Some(event_loop) = companion {
                        event_loop.set_current();
                    }
                    if !busy_poll.is_zero() {
                        runtime.spawn(busy_poll::spin(busy_poll));
                    }
                    runtime.spawn(cycle_metrics::publish());
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Dropping the runtime cancels what is left; by now the
                    // sessions have ended or been terminated.
                    drop(runtime);
                    cycle_metrics::publish_now();
                })
                .map_err(start)?;
            workers.push(Worker {
                handle,
                live: Arc::new(AtomicUsize::new(0)),
                stop: Mutex::new(Some(stop)),
                thread: Mutex::new(Some(thread)),
                event_loop: event_loop.map(|(l, t)| (l, Mutex::new(Some(t)))),
            });
        }
        Ok(Self {
            workers,
            pack,
            next: AtomicUsize::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs the future `make` builds on the thread chosen as the module docs
    /// say. `make` runs on that thread, so it may register sockets with that
    /// thread's driver (`TcpStream::from_std`).
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let worker = self.choose();
        worker.live.fetch_add(1, Ordering::Relaxed);
        let live = Live(worker.live.clone());
        worker.handle.spawn(async move {
            let _live = live;
            make().await;
        });
    }

    fn choose(&self) -> &Worker {
        let packed = self
            .workers
            .iter()
            .find(|w| w.live.load(Ordering::Relaxed) < self.pack);
        if let Some(w) = packed {
            return w;
        }
        let n = self.workers.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| &self.workers[(first + i) % n])
            .min_by_key(|w| w.live.load(Ordering::Relaxed))
            .unwrap_or(&self.workers[first])
    }

    /// Live sessions per thread, in thread order.
    pub fn live(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.live.load(Ordering::Relaxed))
            .collect()
    }

    /// Tells every thread to stop (once; later calls do nothing).
    fn signal_stop(&self) {
        for w in &self.workers {
            if let Some(stop) = w.stop.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let _ = stop.send(());
            }
        }
    }

    /// Tells every event loop to stop.
    fn signal_stop_loops(&self) {
        for (event_loop, _) in self.workers.iter().filter_map(|w| w.event_loop.as_ref()) {
            event_loop.stop();
        }
    }

    /// Stops every thread and waits for it (blocking; call off the async
    /// threads). Sessions still running are dropped, closing their sockets.
    pub fn stop(&self) {
        self.signal_stop();
        for w in &self.workers {
            let thread = w
                .thread
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        }
        // After the session threads: their tasks own the sessions' slots.
        self.signal_stop_loops();
        for (_, thread) in self.workers.iter().filter_map(|w| w.event_loop.as_ref()) {
            let thread = thread.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for SessionThreads {
    fn drop(&mut self) {
        self.signal_stop();
        self.signal_stop_loops();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Instant};

    use super::*;

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn sessions_go_to_the_least_loaded_thread_and_stay_there() {
        let threads =
            SessionThreads::start(2, 0, Duration::from_micros(50), false).expect("threads start");
        let (names_tx, names) = mpsc::channel();
        let mut releases = Vec::new();
        for _ in 0..4 {
            let (release, released) = oneshot::channel::<()>();
            releases.push(release);
            let names_tx = names_tx.clone();
            threads.spawn(move || async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = released.await;
                // Resumed on the thread it started on.
                assert_eq!(std::thread::current().name().map(str::to_owned), name);
                let _ = names_tx.send(name);
            });
        }
        wait_until("four live sessions", || {
            threads.live().iter().sum::<usize>() == 4
        });
        assert_eq!(threads.live(), vec![2, 2]);
        drop(releases);
        let mut seen: Vec<_> = (0..4)
            .map(|_| {
                names
                    .recv_timeout(Duration::from_secs(5))
                    .expect("session ended")
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            ["proxy-0", "proxy-0", "proxy-1", "proxy-1"].map(|n| Some(n.to_owned()))
        );
        wait_until("no live sessions", || threads.live() == vec![0, 0]);
        threads.stop();
    }

    #[test]
    fn a_thread_takes_pack_sessions_before_the_next_gets_any() {
        let threads =
            SessionThreads::start(2, 3, Duration::from_micros(50), false).expect("threads start");
        let mut releases = Vec::new();
        for live in [[1, 0], [2, 0], [3, 0], [3, 1], [3, 2]] {
            let (release, released) = oneshot::channel::<()>();
            releases.push(release);
            threads.spawn(move || async move {
                let _ = released.await;
            });
            // `spawn` counts the session before it returns.
            assert_eq!(threads.live(), live);
        }
        drop(releases);
        wait_until("no live sessions", || threads.live() == vec![0, 0]);
        threads.stop();
    }
}
