//! The relay's state machine fed an arbitrary interleaving of client and
//! server chunks and refusals, as the event loop and the async relay drive
//! it: client chunks through `follow_client_chunk`, server chunks through
//! `follow_server_chunk`, refused cycles through the tracker's queue.
//!
//! Input: a sequence of (op, length, bytes) records; op % 4 is a client
//! chunk, a server chunk, a refusal, or a hand-over check.

#![no_main]

use std::time::Instant;

use dynabase::proxy::{
    codec::{backend, scanner::Scanner},
    cycle::client_prefix_len,
    relay_state::{follow_client_chunk, follow_server_chunk, RelayState},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut state = RelayState::new(b'I');
    // A second client scanner counts the cycles the tracker should open.
    let mut shadow = Scanner::new(client_prefix_len);
    let (mut opened, mut finished, mut refused, mut answered) = (0usize, 0usize, 0usize, 0usize);
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let take = usize::from(*len).min(tail.len());
        let (chunk, after) = tail.split_at(take);
        rest = after;
        match op % 4 {
            0 => {
                let followed = follow_client_chunk(
                    &mut state.client_scanner,
                    &mut state.in_batch,
                    &mut state.tracker,
                    chunk,
                    now,
                );
                let shadowed = shadow.scan(chunk, |m| {
                    if matches!(m.tag, b'Q' | b'F' | b'S') {
                        opened += 1;
                    }
                });
                assert_eq!(followed.is_err(), shadowed.is_err());
                if followed.is_err() {
                    // The relay closes the session.
                    return;
                }
            }
            1 => {
                let followed = follow_server_chunk(
                    &mut state.server_scanner,
                    &mut state.status,
                    &mut state.tracker,
                    chunk,
                    now,
                    |_, started, _| {
                        assert!(started <= now);
                        finished += 1;
                    },
                );
                if followed.is_err() {
                    return;
                }
                let mut out = Vec::new();
                if state.tracker.take_refusals(&mut out, state.status) {
                    answered += count_ready(&out);
                }
            }
            2 => {
                refused += 1;
                let mut error = Vec::new();
                backend::error_response(
                    &mut error,
                    &backend::ErrorFields {
                        severity: backend::Severity::Error,
                        code: "53400",
                        message: "rate limited",
                        detail: None,
                        hint: None,
                    },
                );
                if state.tracker.refused(error.into_boxed_slice()) {
                    let mut out = Vec::new();
                    assert!(state.tracker.take_refusals(&mut out, state.status));
                    answered += count_ready(&out);
                }
            }
            _ => {
                // Where a hand-over from the event loop to the async relay
                // would look; both scanners must agree on the client side.
                assert_eq!(state.client_scanner.at_boundary(), shadow.at_boundary());
            }
        }
        assert_eq!(state.tracker.in_flight(), opened - finished);
        assert!(answered <= refused);
    }
});

/// ReadyForQuery messages in a run of whole messages the proxy wrote.
fn count_ready(out: &[u8]) -> usize {
    let mut n = 0;
    let mut scanner = Scanner::new(|_| 0);
    scanner
        .scan(out, |m| n += usize::from(m.tag == b'Z'))
        .expect("the proxy's own messages are well framed");
    assert!(scanner.at_boundary());
    n
}
