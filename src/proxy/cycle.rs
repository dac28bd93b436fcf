//! Query-cycle observation: which statement a client sent and how long the
//! server took to answer it, from the first message of a cycle to its
//! ReadyForQuery.
//!
//! A cycle is a simple `Query`, a `FunctionCall`, or an extended-protocol
//! batch up to `Sync`; pipelined batches queue up and each ReadyForQuery
//! closes the oldest one.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

pub use dynabase_actors::domain::cycle::{CycleEvent, SessionLabels, StatementKind};

/// Classifies SQL text by its first keyword (after whitespace, comments and
/// parentheses). `WITH` counts as a SELECT.
pub fn classify(sql: &[u8]) -> StatementKind {
    let mut s = sql;
    loop {
        match s {
            [b' ' | b'\t' | b'\n' | b'\r' | b'(', rest @ ..] => s = rest,
            [b'-', b'-', rest @ ..] => {
                let end = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1);
                s = &rest[end..];
            }
            [b'/', b'*', rest @ ..] => {
                let end = rest
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map_or(rest.len(), |i| i + 2);
                s = &rest[end..];
            }
            _ => break,
        }
    }
    let word_len = s
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(s.len());
    let word = &s[..word_len];
    let is = |kw: &str| word.eq_ignore_ascii_case(kw.as_bytes());
    if is("select") || is("with") || is("values") || is("table") || is("show") {
        StatementKind::Select
    } else if is("insert") || is("copy") {
        StatementKind::Insert
    } else if is("update") || is("merge") {
        StatementKind::Update
    } else if is("delete") || is("truncate") {
        StatementKind::Delete
    } else if is("create")
        || is("alter")
        || is("drop")
        || is("comment")
        || is("grant")
        || is("revoke")
    {
        StatementKind::Ddl
    } else {
        StatementKind::Other
    }
}

/// How many body bytes the client-side scanner keeps per message tag.
pub fn client_prefix_len(tag: u8) -> usize {
    match tag {
        b'Q' | b'P' | b'B' => super::codec::scanner::MAX_PREFIX,
        _ => 0,
    }
}

/// How many body bytes the server-side scanner keeps per message tag.
pub fn server_prefix_len(tag: u8) -> usize {
    usize::from(tag == b'Z')
}

/// Most prepared statement names remembered per session.
const MAX_STATEMENTS: usize = 4096;

/// A cycle the server has yet to answer, or a refused one whose answer the
/// proxy gives in its turn.
#[derive(Debug)]
enum Pending {
    Cycle(Instant, StatementKind),
    /// An ErrorResponse to send, followed by a ReadyForQuery.
    Refused(Box<[u8]>),
}

/// Per-session cycle bookkeeping, fed by both relay directions.
#[derive(Debug, Default)]
pub struct CycleTracker {
    pending: VecDeque<Pending>,
    /// Real cycles in `pending` (refusals excluded).
    cycles_in_flight: usize,
    batch: Option<(Instant, StatementKind)>,
    /// Prepared statement kinds by name (looked up on every Bind, so a
    /// fast hasher; names come from the session's own client).
    statements: HashMap<Box<[u8]>, StatementKind, foldhash::fast::RandomState>,
}

fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

impl CycleTracker {
    /// A client message started (`prefix` holds the start of its body).
    pub fn client_message(&mut self, tag: u8, prefix: &[u8], now: Instant) {
        match tag {
            b'Q' => self.push_cycle(now, classify(prefix)),
            b'F' => self.push_cycle(now, StatementKind::Other),
            b'P' => {
                let (name, query) = cstr(prefix);
                let kind = classify(query);
                if self.statements.len() >= MAX_STATEMENTS {
                    self.statements.clear();
                }
                self.statements.insert(name.into(), kind);
                self.batch_kind(now, kind);
            }
            b'B' => {
                let (_portal, rest) = cstr(prefix);
                let (statement, _) = cstr(rest);
                let kind = self
                    .statements
                    .get(statement)
                    .copied()
                    .unwrap_or(StatementKind::Other);
                self.batch_kind(now, kind);
            }
            b'E' | b'D' | b'C' | b'H' => {
                self.batch.get_or_insert((now, StatementKind::Other));
            }
            b'S' => {
                let (started, kind) = self.batch.take().unwrap_or((now, StatementKind::Other));
                self.push_cycle(started, kind);
            }
            _ => {}
        }
    }

    fn batch_kind(&mut self, now: Instant, kind: StatementKind) {
        match &mut self.batch {
            None => self.batch = Some((now, kind)),
            // The first data-bearing statement of a batch names it.
            Some((_, k @ StatementKind::Other)) => *k = kind,
            Some(_) => {}
        }
    }

    fn push_cycle(&mut self, started: Instant, kind: StatementKind) {
        self.pending.push_back(Pending::Cycle(started, kind));
        self.cycles_in_flight += 1;
    }

    /// A refused cycle: its ErrorResponse goes out after the answers to the
    /// cycles sent before it. Returns true when none are pending, so the
    /// caller must have it sent now (see [`Self::take_refusals`]).
    pub fn refused(&mut self, error_response: Box<[u8]>) -> bool {
        let first = self.pending.is_empty();
        self.pending.push_back(Pending::Refused(error_response));
        first
    }

    /// The server sent ReadyForQuery: the oldest pending cycle is done.
    pub fn ready_for_query(&mut self, now: Instant) -> Option<(StatementKind, Instant, Duration)> {
        match self.pending.front() {
            Some(Pending::Cycle(..)) => {}
            _ => return None,
        }
        let Some(Pending::Cycle(started, kind)) = self.pending.pop_front() else {
            return None;
        };
        self.cycles_in_flight -= 1;
        Some((kind, started, now.saturating_duration_since(started)))
    }

    /// Appends the answers to refused cycles now at the front of the queue
    /// (each an ErrorResponse and a ReadyForQuery with `status`). Returns
    /// whether anything was appended.
    pub fn take_refusals(&mut self, out: &mut Vec<u8>, status: u8) -> bool {
        let mut any = false;
        while let Some(Pending::Refused(_)) = self.pending.front() {
            if let Some(Pending::Refused(error)) = self.pending.pop_front() {
                out.extend_from_slice(&error);
                super::codec::backend::ready_for_query(out, status);
                any = true;
            }
        }
        any
    }

    /// Cycles sent upstream but not yet answered.
    pub fn in_flight(&self) -> usize {
        self.cycles_in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_first_keyword() {
        assert_eq!(classify(b"  select 1"), StatementKind::Select);
        assert_eq!(
            classify(b"/* hi */ -- x\nINSERT INTO t"),
            StatementKind::Insert
        );
        assert_eq!(classify(b"(SELECT 1)"), StatementKind::Select);
        assert_eq!(classify(b"update t set"), StatementKind::Update);
        assert_eq!(classify(b"DELETE FROM t"), StatementKind::Delete);
        assert_eq!(classify(b"create table t()"), StatementKind::Ddl);
        assert_eq!(classify(b"BEGIN"), StatementKind::Other);
        assert_eq!(classify(b""), StatementKind::Other);
        assert_eq!(classify(b"/* unterminated"), StatementKind::Other);
    }

    #[test]
    fn pipelined_batches_close_in_order() {
        let t0 = Instant::now();
        let mut t = CycleTracker::default();
        t.client_message(b'P', b"s1\0UPDATE t SET a=1\0", t0);
        t.client_message(b'B', b"\0s1\0", t0);
        t.client_message(b'E', b"", t0);
        t.client_message(b'S', b"", t0);
        // Prepared statement reused without Parse: kind remembered.
        t.client_message(b'B', b"\0s1\0", t0);
        t.client_message(b'E', b"", t0);
        t.client_message(b'S', b"", t0);
        t.client_message(b'Q', b"select 1", t0);
        assert_eq!(t.in_flight(), 3);
        let kinds: Vec<_> = (0..3).map(|_| t.ready_for_query(t0).unwrap().0).collect();
        assert_eq!(
            kinds,
            [
                StatementKind::Update,
                StatementKind::Update,
                StatementKind::Select
            ]
        );
        assert!(t.ready_for_query(t0).is_none());
    }
}
