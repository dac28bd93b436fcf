//! `RelayState`: where a session's relay stands between two messages, so a
//! session can move from one relay to the other.
//!
//! Established plain-TCP sessions with no QPS limit run on an event-loop
//! thread ([`super::event_loop`]); the async relay ([`super::relay`]) serves
//! the rest. When a tier change gives such a session a limit, the event loop
//! hands it back with this state, and the async relay carries on from it.

use std::time::{Duration, Instant};

use super::{
    codec::{
        scanner::{Piece, Scanner},
        CodecError,
    },
    cycle::{client_prefix_len, server_prefix_len, CycleTracker, StatementKind},
};

/// Both directions' protocol position and the cycles in flight.
#[derive(Debug)]
pub struct RelayState {
    /// Client → server. A hand-over happens before a client read, so
    /// nothing client-side is ever left unsent.
    pub client_scanner: Scanner,
    /// Inside an extended-protocol batch (since its first message, until Sync).
    pub in_batch: bool,
    pub server_scanner: Scanner,
    /// Transaction status of the last ReadyForQuery.
    pub status: u8,
    pub tracker: CycleTracker,
    /// Server bytes already scanned but not yet written to the client.
    pub to_client: Vec<u8>,
}

impl RelayState {
    /// A session just authenticated; `status` is from its ReadyForQuery.
    pub fn new(status: u8) -> Self {
        Self {
            client_scanner: Scanner::new(client_prefix_len),
            in_batch: false,
            server_scanner: Scanner::new(server_prefix_len),
            status,
            tracker: CycleTracker::default(),
            to_client: Vec::new(),
        }
    }
}

/// Whether a client message with `tag` starts a new query cycle; follows
/// extended-protocol batches in `in_batch`.
pub fn starts_cycle(tag: u8, in_batch: &mut bool) -> bool {
    match tag {
        b'Q' | b'F' => true,
        b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => !std::mem::replace(in_batch, true),
        b'S' => {
            *in_batch = false;
            false
        }
        _ => false,
    }
}

/// Follows a client chunk that is forwarded whole: batch boundaries into
/// `in_batch`, each message's start into `tracker`. Both relays use it for
/// sessions that nothing can hold back or refuse.
pub fn follow_client_chunk(
    scanner: &mut Scanner,
    in_batch: &mut bool,
    tracker: &mut CycleTracker,
    chunk: &[u8],
    now: Instant,
) -> Result<(), CodecError> {
    scanner.walk(chunk, |piece| match piece {
        Piece::Header { tag, .. } => {
            starts_cycle(tag, in_batch);
        }
        Piece::Prefix(m) => tracker.client_message(m.tag, m.prefix, now),
        Piece::Body(_) => {}
    })
}

/// Follows a server chunk that is forwarded whole: each ReadyForQuery's
/// transaction status into `status` (`I` when its body is empty), and the
/// cycle it ends, which `on_cycle` receives with its start and duration.
pub fn follow_server_chunk(
    scanner: &mut Scanner,
    status: &mut u8,
    tracker: &mut CycleTracker,
    chunk: &[u8],
    now: Instant,
    mut on_cycle: impl FnMut(StatementKind, Instant, Duration),
) -> Result<(), CodecError> {
    scanner.walk(chunk, |piece| {
        if let Piece::Prefix(m) = piece {
            if m.tag == b'Z' {
                *status = m.prefix.first().copied().unwrap_or(b'I');
                if let Some((kind, started, duration)) = tracker.ready_for_query(now) {
                    on_cycle(kind, started, duration);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::codec::write_message;

    #[test]
    fn server_chunks_end_the_cycles_client_chunks_opened() {
        let now = Instant::now();
        let mut state = RelayState::new(b'I');
        let mut client = Vec::new();
        write_message(&mut client, b'Q', b"SELECT 1\0");
        write_message(&mut client, b'P', b"\0SELECT 2\0\0\0");
        write_message(&mut client, b'S', b"");
        follow_client_chunk(
            &mut state.client_scanner,
            &mut state.in_batch,
            &mut state.tracker,
            &client,
            now,
        )
        .unwrap();
        assert_eq!(state.tracker.in_flight(), 2);
        let mut server = Vec::new();
        write_message(&mut server, b'C', b"SELECT 1\0");
        write_message(&mut server, b'Z', b"T");
        write_message(&mut server, b'Z', b"");
        let mut ended = Vec::new();
        // One byte at a time: the status is read across reads.
        for byte in server.chunks(1) {
            follow_server_chunk(
                &mut state.server_scanner,
                &mut state.status,
                &mut state.tracker,
                byte,
                now,
                |kind, _, _| ended.push(kind),
            )
            .unwrap();
            if ended.len() == 1 {
                assert_eq!(state.status, b'T');
            }
        }
        assert_eq!(ended, [StatementKind::Select, StatementKind::Select]);
        assert_eq!(state.status, b'I');
        assert_eq!(state.tracker.in_flight(), 0);
        assert!(state.server_scanner.at_boundary());
    }
}
