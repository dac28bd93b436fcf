//! `Pair`: one session's two sockets on an event-loop thread, and the relay
//! step that moves bytes between them while following the protocol.
//!
//! Readiness is edge-triggered, so each socket carries flags saying whether
//! it may still be read or written; a step reads or writes until the kernel
//! says `WouldBlock`, and the next event sets the flag again. As tokio does,
//! a read that returns less than the buffer counts as draining the socket,
//! which saves an `EAGAIN` read per message — except once the peer has
//! closed its side: its FIN may have come in with the last data, and no
//! further edge would report it.
//!
//! Reads go into the thread's one buffer and are written straight on; only
//! what the peer would not take is kept with the session, and that side is
//! not read again until it has gone. So an idle session holds no buffer,
//! and a slow reader throttles its writer (the kernel's buffers fill up).

use std::{
    io::{self, ErrorKind, Read, Write},
    net::TcpStream,
    time::Instant,
};

use super::super::{
    codec::CodecError,
    relay::{codec_to_io, RelayEnd, RelayObserver},
    relay_state::{follow_client_chunk, follow_server_chunk, RelayState},
};

/// Reads a pair may do in one step before others get their turn.
const READS_PER_STEP: usize = 16;

/// One socket and what is known of its readiness.
#[derive(Debug)]
pub struct Socket {
    pub stream: TcpStream,
    pub readable: bool,
    pub writable: bool,
    /// The peer has shut down its side (or the socket failed): read on
    /// until the end-of-stream or the error comes out.
    pub read_closed: bool,
}

impl Socket {
    pub fn new(stream: TcpStream) -> Self {
        // Assume both until the kernel says otherwise: data may have arrived
        // before the socket was registered.
        Self {
            stream,
            readable: true,
            writable: true,
            read_closed: false,
        }
    }
}

/// Why a step stopped.
#[derive(Debug)]
pub enum Stop {
    /// Nothing more can happen until the next readiness event.
    Blocked,
    /// Read budget used up with more to do: step again after other pairs.
    Again,
    /// The relay is over.
    Ended(RelayEnd),
    /// The session's gate has a QPS limit now: its client must go through
    /// the async relay, which can wait and refuse.
    Limited,
}

/// A session on the event loop.
pub struct Pair {
    pub client: Socket,
    pub server: Socket,
    pub observer: RelayObserver,
    pub state: RelayState,
    /// Client bytes the server has not taken yet.
    pub to_server: Vec<u8>,
    /// A cycle is in flight (mirrors `state.tracker.in_flight() > 0`).
    pub active: bool,
}

impl Pair {
    /// Moves bytes both ways until blocked, ended or out of budget. `buf` is
    /// the thread's read buffer; `read` is called for each relayed read.
    pub fn step(&mut self, buf: &mut [u8], mut read: impl FnMut(u64)) -> Stop {
        let mut reads = 0;
        loop {
            let mut moved = false;
            match flush(&mut self.server, &mut self.to_server) {
                Ok(m) => moved |= m,
                Err(e) => return Stop::Ended(RelayEnd::ServerError(e)),
            }
            match flush(&mut self.client, &mut self.state.to_client) {
                Ok(m) => moved |= m,
                Err(e) => return Stop::Ended(RelayEnd::ClientError(e)),
            }
            if reads >= READS_PER_STEP {
                return if moved || self.could_read() {
                    Stop::Again
                } else {
                    Stop::Blocked
                };
            }
            if self.to_server.is_empty() && self.client.readable {
                // Checked before reading, so a hand-over leaves nothing
                // half-forwarded on the client side.
                if !self.observer.gate.load().is_unlimited() {
                    return Stop::Limited;
                }
                match read_some(&mut self.client, buf) {
                    Ok(Some(0)) => return Stop::Ended(RelayEnd::ClientClosed),
                    Ok(Some(n)) => {
                        reads += 1;
                        moved = true;
                        read(self.observer.info.id);
                        if let Err(e) = self.scan_client(&buf[..n]) {
                            return Stop::Ended(RelayEnd::ClientError(codec_to_io(e)));
                        }
                        if let Err(e) = send(&mut self.server, &buf[..n], &mut self.to_server) {
                            return Stop::Ended(RelayEnd::ServerError(e));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return Stop::Ended(RelayEnd::ClientError(e)),
                }
            }
            if self.state.to_client.is_empty() && self.server.readable {
                match read_some(&mut self.server, buf) {
                    Ok(Some(0)) => return Stop::Ended(RelayEnd::ServerClosed),
                    Ok(Some(n)) => {
                        reads += 1;
                        moved = true;
                        read(self.observer.info.id);
                        if let Err(e) = self.scan_server(&buf[..n]) {
                            return Stop::Ended(RelayEnd::ServerError(codec_to_io(e)));
                        }
                        if let Err(e) = send(&mut self.client, &buf[..n], &mut self.state.to_client)
                        {
                            return Stop::Ended(RelayEnd::ClientError(e));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return Stop::Ended(RelayEnd::ServerError(e)),
                }
            }
            if !moved {
                return Stop::Blocked;
            }
        }
    }

    fn could_read(&self) -> bool {
        (self.to_server.is_empty() && self.client.readable)
            || (self.state.to_client.is_empty() && self.server.readable)
    }

    /// Whether the client stream is between messages with nothing of the
    /// server's half-written, so a FATAL may be sent to it.
    pub fn at_boundary(&self) -> bool {
        self.state.server_scanner.at_boundary() && self.state.to_client.is_empty()
    }

    fn scan_client(&mut self, chunk: &[u8]) -> Result<(), CodecError> {
        let state = &mut self.state;
        follow_client_chunk(
            &mut state.client_scanner,
            &mut state.in_batch,
            &mut state.tracker,
            chunk,
            Instant::now(),
        )?;
        self.set_active(self.state.tracker.in_flight() > 0);
        Ok(())
    }

    fn scan_server(&mut self, chunk: &[u8]) -> Result<(), CodecError> {
        let now = Instant::now();
        let state = &mut self.state;
        let observer = &self.observer;
        follow_server_chunk(
            &mut state.server_scanner,
            &mut state.status,
            &mut state.tracker,
            chunk,
            now,
            |kind, started, duration| observer.cycle_finished(kind, started, duration),
        )?;
        self.set_active(self.state.tracker.in_flight() > 0);
        Ok(())
    }

    fn set_active(&mut self, active: bool) {
        if self.active != active {
            self.active = active;
            self.observer.session_active(active);
        }
    }
}

/// Reads once; `None` when the socket had nothing (its flag is cleared).
fn read_some(socket: &mut Socket, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match socket.stream.read(buf) {
            Ok(n) => {
                if n < buf.len() && !socket.read_closed {
                    socket.readable = false;
                }
                return Ok(Some(n));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                socket.readable = false;
                return Ok(None);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes `bytes` as far as the socket takes them and keeps the rest in
/// `unsent` (empty on entry).
fn send(socket: &mut Socket, bytes: &[u8], unsent: &mut Vec<u8>) -> io::Result<()> {
    let written = if socket.writable {
        write_some(socket, bytes)?
    } else {
        0
    };
    if written < bytes.len() {
        unsent.extend_from_slice(&bytes[written..]);
    }
    Ok(())
}

/// Writes what it can of `unsent`; true if anything went.
fn flush(socket: &mut Socket, unsent: &mut Vec<u8>) -> io::Result<bool> {
    if unsent.is_empty() || !socket.writable {
        return Ok(false);
    }
    let written = write_some(socket, unsent)?;
    unsent.drain(..written);
    if unsent.is_empty() {
        // Let a large answer's buffer go once it is out.
        *unsent = Vec::new();
    }
    Ok(written > 0)
}

/// Writes until done or `WouldBlock` (which clears the flag).
fn write_some(socket: &mut Socket, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match socket.stream.write(&bytes[written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                socket.writable = false;
                break;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::net::{Shutdown, TcpListener};

    use super::*;

    /// A connected pair of non-blocking sockets: (ours, the peer's).
    fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let peer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("non-blocking");
        (ours, peer)
    }

    /// Reads until the socket gives something other than `WouldBlock`.
    fn read_when_ready(socket: &mut Socket, buf: &mut [u8]) -> io::Result<Option<usize>> {
        for _ in 0..1000 {
            socket.readable = true;
            match read_some(socket, buf)? {
                Some(n) => return Ok(Some(n)),
                None => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        Ok(None)
    }

    #[test]
    fn a_short_read_clears_readable_until_the_peer_has_closed() {
        let mut buf = [0u8; 64];
        let (ours, mut peer) = connected();
        let mut socket = Socket::new(ours);
        peer.write_all(b"abc").expect("write");
        assert_eq!(
            read_when_ready(&mut socket, &mut buf).expect("read"),
            Some(3)
        );
        assert!(!socket.readable, "a short read drains an open socket");

        // Data and FIN together: the end-of-stream must still come out.
        peer.write_all(b"de").expect("write");
        peer.shutdown(Shutdown::Write).expect("shutdown");
        socket.read_closed = true;
        assert_eq!(
            read_when_ready(&mut socket, &mut buf).expect("read"),
            Some(2)
        );
        assert!(socket.readable, "a closed peer is read to its end");
        assert_eq!(read_some(&mut socket, &mut buf).expect("read"), Some(0));
    }

    #[test]
    fn what_a_peer_will_not_take_is_kept_and_sent_later() {
        let (ours, mut peer) = connected();
        let mut socket = Socket::new(ours);
        let bytes = vec![7u8; 8 << 20];
        let mut unsent = Vec::new();
        send(&mut socket, &bytes, &mut unsent).expect("send");
        assert!(!unsent.is_empty(), "8 MiB do not fit the socket buffers");
        assert!(!socket.writable);
        let mut received = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while received.len() < bytes.len() {
            socket.writable = true;
            flush(&mut socket, &mut unsent).expect("flush");
            peer.set_read_timeout(Some(std::time::Duration::from_millis(10)))
                .expect("timeout");
            match peer.read(&mut chunk) {
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        assert!(unsent.is_empty());
        assert_eq!(received, bytes);
    }
}
