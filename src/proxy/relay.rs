//! The relay: bytes flow both ways while the scanners follow the message
//! boundaries, so query cycles are counted, timed and rate-limited without
//! buffering results.
//!
//! Each direction has its own loop so neither can stall the other (a client
//! streaming COPY data while the server sends notices must not deadlock).
//! Buffers start small and grow only while data flows, so idle sessions cost
//! little memory.
//!
//! Rate limiting happens on the client side at the first message of each
//! cycle: the cycle waits (up to the queue delay) or is refused. A refused
//! cycle's messages are dropped up to its Sync and the proxy answers with an
//! ErrorResponse and a ReadyForQuery carrying the server's real transaction
//! status, in the cycle's turn, so pipelining clients stay in step.

use std::{
    future::{poll_fn, Future},
    io,
    ops::Range,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    task::{ready, Context, Poll, Waker},
    time::{Duration, Instant},
};

use dynabase_actors::{
    domain::cycle::{CycleEvent, SessionLabels, StatementKind},
    tenant::{GateVerdict, SharedGate},
    Tier,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{
    client_error::rate_limited,
    codec::scanner::{Piece, Scanner, MAX_PREFIX},
    cycle::CycleTracker,
    cycle_sink::CycleSink,
    relay_state::{follow_client_chunk, starts_cycle, RelayState},
    sessions::{SessionInfo, SessionState},
};

const MIN_BUF: usize = 1024;
const MAX_BUF: usize = 64 * 1024;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    ClientClosed,
    ServerClosed,
    /// Ended by an operator or shutdown; `at_boundary` says whether the
    /// client stream is between messages (so an ErrorResponse may be sent).
    Terminated {
        at_boundary: bool,
    },
    ClientError(io::Error),
    ServerError(io::Error),
}

/// What the relay reports to and asks.
pub struct RelayObserver {
    pub info: Arc<SessionInfo>,
    pub labels: Arc<SessionLabels>,
    pub sink: CycleSink,
    pub gate: SharedGate,
    pub max_queue_delay: Duration,
    /// The session's tier, for the query-cycle metrics.
    pub tier: Tier,
    pub delayed_total: metrics::Counter,
    pub refused_total: metrics::Counter,
    pub decision_seconds: metrics::Histogram,
}

/// A read buffer that grows while reads fill it and shrinks when idle.
/// The vector is kept zero-filled to its full length so reads need no
/// unsafe code; `filled` says how much the last read returned.
struct AdaptiveBuf {
    bytes: Vec<u8>,
    filled: usize,
}

impl AdaptiveBuf {
    fn new() -> Self {
        Self {
            bytes: vec![0; MIN_BUF],
            filled: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        &self.bytes[..self.filled]
    }

    fn poll_read_from<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(&mut self.bytes);
        ready!(Pin::new(r).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.filled = n;
        let cap = self.bytes.len();
        if n == cap && cap < MAX_BUF {
            self.bytes.resize(cap * 2, 0);
        } else if cap > MIN_BUF && n < cap / 4 {
            self.bytes.truncate(n.max(MIN_BUF));
            self.bytes.shrink_to_fit();
        }
        Poll::Ready(Ok(n))
    }

    async fn read_from<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read_from(r, cx)).await
    }
}

/// State shared by the two directions of one session (same task).
struct Shared {
    tracker: Mutex<CycleTracker>,
    /// The client side queued a refusal with nothing in flight before it;
    /// the server side sends it.
    refusal_ready: AtomicBool,
    /// The relay task's waker, so the client side can have the server side
    /// polled after queuing a refusal (rare, so a lock is fine).
    task: Mutex<Option<Waker>>,
    /// A cycle is in flight.
    active: AtomicBool,
}

impl Shared {
    fn set_active(&self, observer: &RelayObserver, active: bool) {
        if self.active.swap(active, Ordering::Relaxed) != active {
            observer.session_active(active);
        }
    }
}

impl RelayObserver {
    /// A cycle is now in flight, or none is: for the admin API, and for
    /// busy polling, which only pays off while few sessions are busy.
    pub(super) fn session_active(&self, active: bool) {
        self.info.set_state(if active {
            SessionState::Active
        } else {
            SessionState::Idle
        });
        super::busy_poll::session_busy(active);
    }

    /// A query cycle ended: counted for the admin API, the metrics and usage.
    pub(super) fn cycle_finished(&self, kind: StatementKind, started: Instant, duration: Duration) {
        self.info.add_cycle();
        super::cycle_metrics::record(self.tier, duration);
        self.sink.record(CycleEvent {
            session: self.labels.clone(),
            kind,
            started,
            duration,
        });
    }
}

/// The server side's state, inspected after the relay ends.
struct ServerSide {
    scanner: Scanner,
    /// A write to the client was interrupted part-way.
    writing: bool,
    /// Transaction status of the last ReadyForQuery.
    status: u8,
}

pub(super) fn codec_to_io(e: super::codec::CodecError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Relays until either side closes or the session is terminated, starting
/// from `state` (`RelayState::new` for a session just authenticated).
pub async fn relay<CR, CW, SR, SW>(
    client_read: &mut CR,
    client_write: &mut CW,
    server_read: &mut SR,
    server_write: &mut SW,
    observer: &RelayObserver,
    state: Box<RelayState>,
) -> RelayEnd
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    // Boxed and taken apart at once: this future is what an idle session
    // on the async relay keeps, so the state should live in it only once.
    let RelayState {
        client_scanner,
        in_batch,
        server_scanner,
        status,
        tracker,
        to_client,
    } = *state;
    let active = tracker.in_flight() > 0;
    if active {
        super::busy_poll::session_busy(true);
    }
    let shared = Shared {
        tracker: Mutex::new(tracker),
        refusal_ready: AtomicBool::new(false),
        task: Mutex::new(None),
        active: AtomicBool::new(active),
    };
    let mut server_side = ServerSide {
        scanner: server_scanner,
        writing: false,
        status,
    };
    let client_side = ClientSide {
        in_batch,
        dropping: None,
        keep: true,
    };
    let end = {
        let mut from_client = pin!(client_to_server(
            client_read,
            server_write,
            client_scanner,
            client_side,
            &shared,
            observer
        ));
        let mut from_server = pin!(server_to_client(
            server_read,
            client_write,
            &mut server_side,
            to_client,
            &shared,
            observer,
        ));
        // Polled by hand rather than with `select!`: this runs on every
        // wake of every session, and the termination check is one load.
        // The task's waker is registered for termination and refusals on
        // the first poll only: this future never leaves its task, and any
        // waker of a task wakes that task.
        let mut registered = false;
        poll_fn(|cx| {
            if !registered {
                registered = true;
                *shared.task.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(cx.waker().clone());
                if observer.info.poll_terminated(cx).is_ready() {
                    return Poll::Ready(RelayEnd::Terminated { at_boundary: false });
                }
            } else if observer.info.is_terminated() {
                return Poll::Ready(RelayEnd::Terminated { at_boundary: false });
            }
            if let Poll::Ready(r) = from_client.as_mut().poll(cx) {
                return Poll::Ready(ended(r, RelayEnd::ClientClosed));
            }
            if let Poll::Ready(r) = from_server.as_mut().poll(cx) {
                return Poll::Ready(ended(r, RelayEnd::ServerClosed));
            }
            Poll::Pending
        })
        .await
    };
    if shared.active.load(Ordering::Relaxed) {
        super::busy_poll::session_busy(false);
    }
    match end {
        RelayEnd::Terminated { .. } => RelayEnd::Terminated {
            at_boundary: server_side.scanner.at_boundary() && !server_side.writing,
        },
        other => other,
    }
}

fn ended(r: Result<(), Side>, closed: RelayEnd) -> RelayEnd {
    match r {
        Ok(()) => closed,
        Err(Side::Client(e)) => RelayEnd::ClientError(e),
        Err(Side::Server(e)) => RelayEnd::ServerError(e),
    }
}

/// Which peer an I/O error came from.
enum Side {
    Client(io::Error),
    Server(io::Error),
}

/// One step of forwarding a client chunk, decided after the walk.
enum Step {
    Header {
        tag: u8,
        bytes: [u8; 5],
    },
    Body(Range<usize>),
    Prefix {
        tag: u8,
        len: usize,
        bytes: [u8; MAX_PREFIX],
    },
}

/// Client-side cycle state across chunks.
struct ClientSide {
    /// Inside an extended-protocol batch (since its first message, until Sync).
    in_batch: bool,
    /// Dropping the messages of a refused batch until its Sync.
    dropping: Option<Box<[u8]>>,
    /// Whether the current message is forwarded.
    keep: bool,
}

async fn client_to_server<R, W>(
    client: &mut R,
    server: &mut W,
    mut scanner: Scanner,
    mut state: ClientSide,
    shared: &Shared,
    observer: &RelayObserver,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = AdaptiveBuf::new();
    let mut steps: Vec<Step> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        let n = buf.read_from(client).await.map_err(Side::Client)?;
        super::busy_poll::note_read(observer.info.id);
        if n == 0 {
            return Ok(());
        }
        let chunk = buf.filled();
        // `keep` is false while the rest of a refused Query or call is
        // still arriving; those bytes must be dropped, limit or not.
        if state.keep && state.dropping.is_none() && observer.gate.load().is_unlimited() {
            // Nothing in this chunk can wait or be refused: forward it as
            // it is and only follow the messages.
            let active = {
                let mut t = shared
                    .tracker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                follow_client_chunk(
                    &mut scanner,
                    &mut state.in_batch,
                    &mut t,
                    chunk,
                    Instant::now(),
                )
                .map_err(|e| Side::Client(codec_to_io(e)))?;
                t.in_flight() > 0
            };
            if active {
                shared.set_active(observer, true);
            }
            server.write_all(chunk).await.map_err(Side::Server)?;
            server.flush().await.map_err(Side::Server)?;
            continue;
        }
        let base = chunk.as_ptr() as usize;
        scanner
            .walk(chunk, |piece| match piece {
                Piece::Header { tag, bytes, .. } => steps.push(Step::Header { tag, bytes }),
                Piece::Body(b) => {
                    let start = b.as_ptr() as usize - base;
                    steps.push(Step::Body(start..start + b.len()));
                }
                Piece::Prefix(m) if !m.prefix.is_empty() => {
                    let mut bytes = [0u8; MAX_PREFIX];
                    bytes[..m.prefix.len()].copy_from_slice(m.prefix);
                    steps.push(Step::Prefix {
                        tag: m.tag,
                        len: m.prefix.len(),
                        bytes,
                    });
                }
                Piece::Prefix(m) => steps.push(Step::Prefix {
                    tag: m.tag,
                    len: 0,
                    bytes: [0u8; MAX_PREFIX],
                }),
            })
            .map_err(|e| Side::Client(codec_to_io(e)))?;

        for step in steps.drain(..) {
            match step {
                Step::Header { tag, bytes } => {
                    if starts_cycle(tag, &mut state.in_batch) {
                        // Messages already allowed go out before any wait.
                        flush(server, &mut out).await?;
                        state.keep = admit(observer)
                            .await
                            .map_err(|refusal| {
                                if tag == b'Q' || tag == b'F' {
                                    refuse(shared, refusal);
                                } else {
                                    state.dropping = Some(refusal);
                                }
                            })
                            .is_ok();
                    } else if state.dropping.is_none() {
                        state.keep = true;
                    }
                    if tag == b'S' {
                        if let Some(refusal) = state.dropping.take() {
                            refuse(shared, refusal);
                            state.keep = false;
                        }
                    }
                    if state.keep {
                        out.extend_from_slice(&bytes);
                    }
                }
                Step::Body(range) => {
                    if state.keep {
                        out.extend_from_slice(&chunk[range]);
                    }
                }
                Step::Prefix { tag, len, bytes } => {
                    if state.keep {
                        let mut t = shared
                            .tracker
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        t.client_message(tag, &bytes[..len], Instant::now());
                        if t.in_flight() > 0 {
                            shared.set_active(observer, true);
                        }
                    }
                }
            }
        }
        flush(server, &mut out).await?;
    }
}

/// Asks the gate; waits when that fits in the queue delay. `Err` carries
/// the ErrorResponse for a refused cycle.
async fn admit(observer: &RelayObserver) -> Result<(), Box<[u8]>> {
    let gate = observer.gate.load();
    if gate.is_unlimited() {
        return Ok(());
    }
    gate.offer();
    if gate.in_shadow() {
        // Admitted at once; counted if enforcement would have refused it.
        gate.shadow_cycle(observer.max_queue_delay);
        return Ok(());
    }
    let deadline = Instant::now() + observer.max_queue_delay;
    let mut waited = false;
    loop {
        // Reloaded each time: a tier change applies to a waiting cycle too.
        let gate = observer.gate.load();
        let decided = Instant::now();
        let mut verdict = gate.check();
        if verdict == GateVerdict::AskShared {
            verdict = gate.check_shared().await;
        }
        observer
            .decision_seconds
            .record(decided.elapsed().as_secs_f64());
        match verdict {
            GateVerdict::Go => {
                if waited {
                    observer.delayed_total.increment(1);
                }
                return Ok(());
            }
            GateVerdict::Wait(wait) if Instant::now() + wait <= deadline => {
                waited = true;
                tokio::time::sleep(wait).await;
            }
            GateVerdict::Wait(_) | GateVerdict::AskShared => {
                observer.refused_total.increment(1);
                return Err(rate_limited(&gate.refusal(wait_of(verdict))));
            }
        }
    }
}

fn wait_of(verdict: GateVerdict) -> Duration {
    match verdict {
        GateVerdict::Wait(wait) => wait,
        _ => Duration::ZERO,
    }
}

fn refuse(shared: &Shared, error_response: Box<[u8]>) {
    let first = shared
        .tracker
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .refused(error_response);
    if first {
        shared.refusal_ready.store(true, Ordering::Release);
        if let Some(task) = &*shared.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }
}

async fn flush<W: AsyncWrite + Unpin>(server: &mut W, out: &mut Vec<u8>) -> Result<(), Side> {
    if !out.is_empty() {
        server.write_all(out).await.map_err(Side::Server)?;
        server.flush().await.map_err(Side::Server)?;
        out.clear();
    }
    Ok(())
}

async fn server_to_client<R, W>(
    server: &mut R,
    client: &mut W,
    side: &mut ServerSide,
    unsent: Vec<u8>,
    shared: &Shared,
    observer: &RelayObserver,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !unsent.is_empty() {
        write(client, side, &unsent).await?;
    }
    let mut buf = AdaptiveBuf::new();
    // Refusal answers to splice in after a ReadyForQuery: (offset, bytes).
    let mut splices: Vec<(usize, Vec<u8>)> = Vec::new();
    loop {
        // Refusals first: one queued with nothing in flight was queued before
        // any later cycle reached the server, so it must reach the client
        // before that cycle's answer.
        let read = poll_fn(|cx| {
            if shared.refusal_ready.load(Ordering::Acquire) {
                shared.refusal_ready.store(false, Ordering::Release);
                return Poll::Ready(None);
            }
            buf.poll_read_from(server, cx).map(Some)
        })
        .await;
        if read.is_some() {
            super::busy_poll::note_read(observer.info.id);
        }
        let Some(n) = read else {
            let mut answers = Vec::new();
            shared
                .tracker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take_refusals(&mut answers, side.status);
            if !answers.is_empty() {
                write(client, side, &answers).await?;
            }
            continue;
        };
        let n = n.map_err(Side::Server)?;
        if n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let chunk = buf.filled();
        let base = chunk.as_ptr() as usize;
        let mut z_end = 0;
        {
            let mut t = shared
                .tracker
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            side.scanner
                .walk(chunk, |piece| match piece {
                    Piece::Body(b) => z_end = b.as_ptr() as usize - base + b.len(),
                    Piece::Prefix(m) if m.tag == b'Z' => {
                        side.status = m.prefix.first().copied().unwrap_or(b'I');
                        if let Some((kind, started, duration)) = t.ready_for_query(now) {
                            observer.cycle_finished(kind, started, duration);
                        }
                        let mut answers = Vec::new();
                        if t.take_refusals(&mut answers, side.status) {
                            splices.push((z_end, answers));
                        }
                    }
                    _ => {}
                })
                .map_err(|e| Side::Server(codec_to_io(e)))?;
            if t.in_flight() == 0 {
                shared.set_active(observer, false);
            }
        }
        if splices.is_empty() {
            write(client, side, chunk).await?;
        } else {
            let mut from = 0;
            for (at, answers) in splices.drain(..) {
                write(client, side, &chunk[from..at]).await?;
                write(client, side, &answers).await?;
                from = at;
            }
            write(client, side, &chunk[from..]).await?;
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(
    client: &mut W,
    side: &mut ServerSide,
    bytes: &[u8],
) -> Result<(), Side> {
    side.writing = true;
    client.write_all(bytes).await.map_err(Side::Client)?;
    // A no-op on TCP; TLS may hold bytes back until flushed.
    client.flush().await.map_err(Side::Client)?;
    side.writing = false;
    Ok(())
}
