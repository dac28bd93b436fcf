//! The relay: bytes flow both ways unchanged while the scanners follow the
//! message boundaries, so query cycles are counted and timed without
//! buffering results.
//!
//! Each direction has its own loop so neither can stall the other (a client
//! streaming COPY data while the server sends notices must not deadlock).
//! Buffers start small and grow only while data flows, so idle sessions cost
//! little memory.

use std::{
    io,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use dynabase_actors::domain::cycle::{CycleEvent, SessionLabels};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    codec::scanner::Scanner,
    cycle::{client_prefix_len, server_prefix_len, CycleSink, CycleTracker},
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

/// What the relay reports to.
pub struct RelayObserver {
    pub info: Arc<SessionInfo>,
    pub labels: Arc<SessionLabels>,
    pub sink: CycleSink,
    pub cycles_total: metrics::Counter,
    pub cycle_seconds: metrics::Histogram,
}

/// A read buffer that grows while reads fill it and shrinks when idle.
struct AdaptiveBuf(Vec<u8>);

impl AdaptiveBuf {
    fn new() -> Self {
        Self(Vec::with_capacity(MIN_BUF))
    }

    async fn read_from<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
        self.0.clear();
        let cap = self.0.capacity();
        let n = r.read_buf(&mut self.0).await?;
        if n == cap && cap < MAX_BUF {
            self.0.reserve_exact(cap * 2 - n);
        } else if cap > MIN_BUF && n < cap / 4 {
            self.0.shrink_to(n.max(MIN_BUF));
        }
        Ok(n)
    }
}

/// The server side's state, inspected after the relay ends.
struct ServerSide {
    scanner: Scanner,
    /// A write to the client was interrupted part-way.
    writing: bool,
}

fn codec_to_io(e: super::codec::CodecError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

pub async fn relay<CR, CW, SR, SW>(
    client_read: &mut CR,
    client_write: &mut CW,
    server_read: &mut SR,
    server_write: &mut SW,
    observer: &RelayObserver,
) -> RelayEnd
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let tracker = Mutex::new(CycleTracker::default());
    let mut server_side = ServerSide {
        scanner: Scanner::new(server_prefix_len),
        writing: false,
    };
    let end = {
        let from_client = client_to_server(client_read, server_write, &tracker, observer);
        let from_server = server_to_client(
            server_read,
            client_write,
            &mut server_side,
            &tracker,
            observer,
        );
        tokio::select! {
            r = from_client => match r {
                Ok(()) => RelayEnd::ClientClosed,
                Err(Side::Client(e)) => RelayEnd::ClientError(e),
                Err(Side::Server(e)) => RelayEnd::ServerError(e),
            },
            r = from_server => match r {
                Ok(()) => RelayEnd::ServerClosed,
                Err(Side::Client(e)) => RelayEnd::ClientError(e),
                Err(Side::Server(e)) => RelayEnd::ServerError(e),
            },
            () = observer.info.terminated() => RelayEnd::Terminated { at_boundary: false },
        }
    };
    match end {
        RelayEnd::Terminated { .. } => RelayEnd::Terminated {
            at_boundary: server_side.scanner.at_boundary() && !server_side.writing,
        },
        other => other,
    }
}

/// Which peer an I/O error came from.
enum Side {
    Client(io::Error),
    Server(io::Error),
}

async fn client_to_server<R, W>(
    client: &mut R,
    server: &mut W,
    tracker: &Mutex<CycleTracker>,
    observer: &RelayObserver,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut scanner = Scanner::new(client_prefix_len);
    let mut buf = AdaptiveBuf::new();
    loop {
        let n = buf.read_from(client).await.map_err(Side::Client)?;
        if n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        {
            let mut t = tracker.lock().unwrap_or_else(PoisonError::into_inner);
            scanner
                .scan(&buf.0, |m| t.client_message(m.tag, m.prefix, now))
                .map_err(|e| Side::Client(codec_to_io(e)))?;
            if t.in_flight() > 0 {
                observer.info.set_state(SessionState::Active);
            }
        }
        server.write_all(&buf.0).await.map_err(Side::Server)?;
        server.flush().await.map_err(Side::Server)?;
    }
}

async fn server_to_client<R, W>(
    server: &mut R,
    client: &mut W,
    side: &mut ServerSide,
    tracker: &Mutex<CycleTracker>,
    observer: &RelayObserver,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = AdaptiveBuf::new();
    loop {
        let n = buf.read_from(server).await.map_err(Side::Server)?;
        if n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        {
            let mut t = tracker.lock().unwrap_or_else(PoisonError::into_inner);
            side.scanner
                .scan(&buf.0, |m| {
                    if m.tag != b'Z' {
                        return;
                    }
                    if let Some((kind, started, duration)) = t.ready_for_query(now) {
                        observer.info.add_cycle();
                        observer.cycles_total.increment(1);
                        observer.cycle_seconds.record(duration.as_secs_f64());
                        observer.sink.record(CycleEvent {
                            session: observer.labels.clone(),
                            kind,
                            started,
                            duration,
                        });
                    }
                })
                .map_err(|e| Side::Server(codec_to_io(e)))?;
            if t.in_flight() == 0 {
                observer.info.set_state(SessionState::Idle);
            }
        }
        side.writing = true;
        client.write_all(&buf.0).await.map_err(Side::Client)?;
        client.flush().await.map_err(Side::Client)?;
        side.writing = false;
    }
}
