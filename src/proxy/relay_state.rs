//! `RelayState`: where a session's relay stands between two messages, so a
//! session can move from one relay to the other.
//!
//! Established plain-TCP sessions with no QPS limit run on an event-loop
//! thread ([`super::event_loop`]); the async relay ([`super::relay`]) serves
//! the rest. When a tier change gives such a session a limit, the event loop
//! hands it back with this state, and the async relay carries on from it.

use std::time::Instant;

use super::{
    codec::{
        scanner::{Piece, Scanner},
        CodecError,
    },
    cycle::{client_prefix_len, server_prefix_len, CycleTracker},
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
