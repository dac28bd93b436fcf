//! The server → client stream: the relay's scanner with the server-side
//! prefix lengths (the ReadyForQuery status), and with the longest prefix
//! for every tag.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use dynabase::proxy::{codec::scanner::MAX_PREFIX, cycle::server_prefix_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (tag, body_len, prefix) in common::check_scanner(server_prefix_len, data) {
        if tag == b'Z' && body_len > 0 {
            assert_eq!(prefix.len(), 1);
        }
    }
    common::check_scanner(|_| MAX_PREFIX, data);
});
