//! The opening packet of a connection (SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage), read from arbitrary client bytes the way
//! the proxy reads it, and parsed directly.

#![no_main]

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use dynabase::proxy::codec::{
    frontend,
    startup::{self, StartupPacket},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As the listener reads it: length word, then the body. A byte slice
    // never blocks, so one poll finishes.
    let mut reader = data;
    let read = pin!(startup::read_startup(&mut reader));
    let Poll::Ready(result) = read.poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("reading from a byte slice cannot be pending");
    };
    if result.is_ok() {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        assert!((8..=startup::MAX_STARTUP_LEN).contains(&len));
    }

    // The body parser on its own, whatever the length word says, and the
    // round trip of what it accepts.
    if let Ok(StartupPacket::Startup(m)) = startup::parse(data.get(4..).unwrap_or_default()) {
        let mut out = Vec::new();
        frontend::startup_message(
            &mut out,
            m.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let Ok(StartupPacket::Startup(again)) = startup::parse(&out[4..]) else {
            panic!("a re-encoded startup message does not parse");
        };
        assert_eq!(again.params, m.params);
        for (k, _) in &m.params {
            // The first occurrence wins.
            let first = m.params.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v);
            assert_eq!(m.param(k), first.map(String::as_str));
        }
    }
});
