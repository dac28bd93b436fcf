//! Event-loop threads: established plain-TCP sessions whose organization
//! has no QPS limit are relayed by one `mio` readiness loop per session
//! thread, below tokio's task machinery.
//!
//! In such a session nothing ever waits except for a socket, so the relay
//! needs no futures: each readiness event runs [`pair::Pair::step`] for the
//! session it names. This is PgBouncer's shape, and it costs less CPU per
//! query cycle than a task per session (load-tests/RESULTS.md,
//! `relay_floor`), which matters most when one thread relays every session.
//!
//! The session's task stays on its tokio thread, owning its slot, lease and
//! cancel key, and awaits an [`Outcome`]: the relay's end (it then tells the
//! client why, as the async relay would), or [`Ended::Limited`] when a tier
//! change gave the organization a QPS limit, in which case it carries on
//! with the async relay from the returned [`RelayState`]. TLS sessions and
//! limited organizations use the async relay from the start.
//!
//! Operators and shutdown end a session through its `SessionInfo` as
//! before: its terminate waker queues the session here and wakes the loop.

mod pair;

use std::{
    cell::RefCell,
    io,
    net::TcpStream,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, PoisonError,
    },
    task::{Context, Wake, Waker},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use mio::{unix::SourceFd, Events, Interest, Poll, Registry, Token};
use tokio::sync::oneshot;

use self::pair::{Pair, Socket, Stop};
use super::{
    busy_poll, cycle_metrics,
    relay::{RelayEnd, RelayObserver},
    relay_state::RelayState,
};

/// The loop's own wake-ups (new sessions, terminations, stop).
const WAKE: Token = Token(usize::MAX);
/// The read buffer every session on a loop shares.
const READ_BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot start proxy event loop {name}: {source}")]
    Start { name: String, source: io::Error },
}

/// How a session left the event loop.
#[derive(Debug)]
pub enum Ended {
    Relay(RelayEnd),
    /// The organization has a QPS limit now; relay on from this state.
    Limited(Box<RelayState>),
}

/// A session handed back to its task, with its sockets.
pub struct Outcome {
    pub ended: Ended,
    pub client: TcpStream,
    pub server: TcpStream,
    pub observer: RelayObserver,
}

struct Adoption {
    client: TcpStream,
    server: TcpStream,
    observer: RelayObserver,
    state: RelayState,
    done: oneshot::Sender<Outcome>,
}

enum Command {
    Adopt(Box<Adoption>),
    Stop,
}

/// A handle to one event-loop thread.
#[derive(Clone)]
pub struct EventLoop {
    commands: mpsc::Sender<Command>,
    wakes: Arc<Wakes>,
    running: Arc<AtomicBool>,
}

/// Marks the loop stopped when its thread ends, panics included.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What wakes the loop from other threads.
struct Wakes {
    waker: mio::Waker,
    /// Slots whose session was asked to end.
    terminated: Mutex<Vec<usize>>,
}

/// The waker a session's `SessionInfo` holds for termination.
struct TerminateWake {
    slot: usize,
    wakes: Arc<Wakes>,
}

impl Wake for TerminateWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes
            .terminated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.slot);
        let _ = self.wakes.waker.wake();
    }
}

thread_local! {
    /// The event loop serving this session thread, if any.
    static CURRENT: RefCell<Option<EventLoop>> = const { RefCell::new(None) };
}

/// The event loop of the current session thread.
pub fn current() -> Option<EventLoop> {
    CURRENT.with_borrow(Clone::clone)
}

impl EventLoop {
    /// Starts a loop thread called `name`; see [`super::busy_poll`] for
    /// `busy_poll`.
    pub fn start(
        name: String,
        busy_poll: Duration,
    ) -> Result<(Self, JoinHandle<()>), EventLoopError> {
        let start = |source| EventLoopError::Start {
            name: name.clone(),
            source,
        };
        let poll = Poll::new().map_err(start)?;
        let waker = mio::Waker::new(poll.registry(), WAKE).map_err(start)?;
        let wakes = Arc::new(Wakes {
            waker,
            terminated: Mutex::new(Vec::new()),
        });
        let (commands, inbox) = mpsc::channel();
        let running = Arc::new(AtomicBool::new(true));
        let handle = Self {
            commands,
            wakes,
            running: running.clone(),
        };
        let thread_wakes = handle.wakes.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _running = Running(running);
                Loop::new(poll, inbox, thread_wakes, busy_poll).run();
                cycle_metrics::publish_now();
            })
            .map_err(start)?;
        Ok((handle, thread))
    }

    /// False once the loop has stopped (or, by a bug, panicked): new
    /// sessions then stay on the async relay.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Makes this the current thread's loop (see [`current`]).
    pub fn set_current(&self) {
        CURRENT.with_borrow_mut(|c| *c = Some(self.clone()));
    }

    /// Relays the session from `state` on the loop; the receiver resolves
    /// when it leaves the loop (or fails, if the loop has stopped).
    pub fn adopt(
        &self,
        client: TcpStream,
        server: TcpStream,
        observer: RelayObserver,
        state: RelayState,
    ) -> oneshot::Receiver<Outcome> {
        let (done, outcome) = oneshot::channel();
        let adoption = Adoption {
            client,
            server,
            observer,
            state,
            done,
        };
        if self
            .commands
            .send(Command::Adopt(Box::new(adoption)))
            .is_ok()
        {
            let _ = self.wakes.waker.wake();
        }
        outcome
    }

    /// Ends the loop; sessions still on it are closed.
    pub fn stop(&self) {
        if self.commands.send(Command::Stop).is_ok() {
            let _ = self.wakes.waker.wake();
        }
    }
}

/// A session on the loop.
struct Slot {
    pair: Pair,
    done: oneshot::Sender<Outcome>,
    /// Already in this round's list of pairs to step.
    queued: bool,
}

/// The loop thread's state.
struct Loop {
    poll: Poll,
    inbox: mpsc::Receiver<Command>,
    wakes: Arc<Wakes>,
    busy_poll: Duration,
    /// Boxed: a slot is several hundred bytes, and a vector of them
    /// doubling to fit thousands of idle sessions leaves its old copies in
    /// the resident set.
    slots: Vec<Option<Box<Slot>>>,
    free: Vec<usize>,
    /// Pairs to step this round, and pairs that ran out of budget.
    ready: Vec<usize>,
    again: Vec<usize>,
    buf: Vec<u8>,
    last_read: Instant,
    /// Reads since the query-cycle metrics were last published.
    unpublished: bool,
    published: Instant,
}

impl Loop {
    fn new(
        poll: Poll,
        inbox: mpsc::Receiver<Command>,
        wakes: Arc<Wakes>,
        busy_poll: Duration,
    ) -> Self {
        let now = Instant::now();
        Self {
            poll,
            inbox,
            wakes,
            busy_poll,
            slots: Vec::new(),
            free: Vec::new(),
            ready: Vec::new(),
            again: Vec::new(),
            buf: vec![0; READ_BUF],
            last_read: now,
            unpublished: false,
            published: now,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "proxy event loop cannot poll; closing its sessions");
                return;
            }
            self.ready.append(&mut self.again);
            for event in events.iter() {
                if event.token() == WAKE {
                    continue;
                }
                let index = event.token().0 / 2;
                let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                    continue;
                };
                let socket = if event.token().0 % 2 == 0 {
                    &mut slot.pair.client
                } else {
                    &mut slot.pair.server
                };
                let closed = event.is_read_closed() || event.is_error();
                socket.read_closed |= closed;
                socket.readable |= event.is_readable() || closed;
                socket.writable |=
                    event.is_writable() || event.is_write_closed() || event.is_error();
                if !slot.queued {
                    slot.queued = true;
                    self.ready.push(index);
                }
            }
            if !self.take_commands() {
                return;
            }
            self.take_terminations();
            self.step_ready();
            if self.unpublished && self.published.elapsed() >= cycle_metrics::PUBLISH_EVERY {
                cycle_metrics::publish_now();
                self.unpublished = false;
                self.published = Instant::now();
            }
        }
    }

    /// How long the next poll may sleep: not at all while a pair has more
    /// to do or busy polling pays, else until the metrics are due.
    fn timeout(&self) -> Option<Duration> {
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        if !self.busy_poll.is_zero()
            && busy_poll::solo()
            && self.last_read.elapsed() < self.busy_poll
        {
            // Give the CPU to PostgreSQL or the client if they need it.
            std::thread::yield_now();
            return Some(Duration::ZERO);
        }
        self.unpublished
            .then(|| cycle_metrics::PUBLISH_EVERY.saturating_sub(self.published.elapsed()))
    }

    fn step_ready(&mut self) {
        let mut ready = std::mem::take(&mut self.ready);
        let mut any_read = false;
        for index in ready.drain(..) {
            let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            slot.queued = false;
            let stop = slot.pair.step(&mut self.buf, |id| {
                any_read = true;
                busy_poll::note_read(id);
            });
            match stop {
                Stop::Blocked => {}
                Stop::Again => {
                    slot.queued = true;
                    self.again.push(index);
                }
                Stop::Ended(end) => self.release(index, Some(end)),
                Stop::Limited => self.release(index, None),
            }
        }
        self.ready = ready;
        if any_read {
            self.last_read = Instant::now();
            self.unpublished = true;
        }
    }

    /// Takes new sessions; false once told to stop.
    fn take_commands(&mut self) -> bool {
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Adopt(adoption) => self.adopt(*adoption),
                Command::Stop => return false,
            }
        }
        true
    }

    fn adopt(&mut self, a: Adoption) {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let registry = self.poll.registry();
        let both = Interest::READABLE | Interest::WRITABLE;
        let registered = register(registry, &a.client, Token(index * 2), both).and_then(|()| {
            register(registry, &a.server, Token(index * 2 + 1), both).inspect_err(|_| {
                let _ = registry.deregister(&mut SourceFd(&a.client.as_raw_fd()));
            })
        });
        let active = a.state.tracker.in_flight() > 0;
        let pair = Pair {
            client: Socket::new(a.client),
            server: Socket::new(a.server),
            observer: a.observer,
            state: a.state,
            to_server: Vec::new(),
            active,
        };
        if active {
            busy_poll::session_busy(true);
        }
        if let Err(e) = registered {
            tracing::warn!(error = %e, "cannot register session sockets with the event loop");
            self.slots[index] = Some(Box::new(Slot {
                pair,
                done: a.done,
                queued: false,
            }));
            self.release(index, Some(RelayEnd::ClientError(e)));
            return;
        }
        // Asked to end before it got here: end it on the first step.
        let waker = Waker::from(Arc::new(TerminateWake {
            slot: index,
            wakes: self.wakes.clone(),
        }));
        let terminated = pair
            .observer
            .info
            .poll_terminated(&mut Context::from_waker(&waker))
            .is_ready();
        self.slots[index] = Some(Box::new(Slot {
            pair,
            done: a.done,
            queued: true,
        }));
        if terminated {
            self.wakes
                .terminated
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(index);
        } else {
            self.ready.push(index);
        }
    }

    fn take_terminations(&mut self) {
        let terminated = std::mem::take(
            &mut *self
                .wakes
                .terminated
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for index in terminated {
            let Some(slot) = self.slots.get(index).and_then(Option::as_ref) else {
                continue;
            };
            if slot.pair.observer.info.is_terminated() {
                let at_boundary = slot.pair.at_boundary();
                self.release(index, Some(RelayEnd::Terminated { at_boundary }));
            }
        }
    }

    /// Takes the session off the loop and hands it back to its task: its
    /// relay ended with `end`, or (`None`) it needs the async relay now.
    fn release(&mut self, index: usize, end: Option<RelayEnd>) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        self.free.push(index);
        let registry = self.poll.registry();
        let Pair {
            client,
            server,
            observer,
            state,
            active,
            ..
        } = slot.pair;
        let _ = registry.deregister(&mut SourceFd(&client.stream.as_raw_fd()));
        let _ = registry.deregister(&mut SourceFd(&server.stream.as_raw_fd()));
        if active {
            busy_poll::session_busy(false);
        }
        let ended = match end {
            Some(end) => Ended::Relay(end),
            None => Ended::Limited(Box::new(state)),
        };
        let _ = slot.done.send(Outcome {
            ended,
            client: client.stream,
            server: server.stream,
            observer,
        });
    }
}

fn register(
    registry: &Registry,
    stream: &TcpStream,
    token: Token,
    interest: Interest,
) -> io::Result<()> {
    registry.register(&mut SourceFd(&stream.as_raw_fd()), token, interest)
}
