//! The client → server stream: the relay's scanner with the client-side
//! prefix lengths, the query classifier and the cycle tracker, plus the
//! whole-message reader the handshake uses.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Instant,
};

use dynabase::proxy::{
    codec,
    cycle::{classify, client_prefix_len, CycleTracker},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let starts = common::check_scanner(client_prefix_len, data);
    let now = Instant::now();
    let mut tracker = CycleTracker::default();
    for (tag, _, prefix) in &starts {
        let _ = classify(prefix);
        tracker.client_message(*tag, prefix, now);
    }
    assert!(tracker.in_flight() <= starts.len());

    // The handshake's reader (password and SASL messages), message after
    // message until the bytes run out or one is refused.
    let mut reader = data;
    for _ in 0..64 {
        let read = pin!(codec::read_message(&mut reader, 8192));
        match read.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok((_, body))) => assert!(body.len() <= 8192),
            Poll::Ready(Err(_)) => break,
            Poll::Pending => panic!("reading from a byte slice cannot be pending"),
        }
    }
});
