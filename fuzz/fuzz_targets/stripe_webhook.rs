//! A Stripe webhook request: arbitrary body and `Stripe-Signature` header
//! checked with a fixed signing secret, and arbitrary bodies carrying a
//! valid signature, so the typed and the lenient event parsing both run.
//!
//! Input: a mode byte, then the header and the body separated by the first
//! NUL (mode 0: the header is used as is; otherwise it is replaced by a valid
//! signature of the body, and mode bits pick a stale timestamp or an extra
//! `v1` entry).

#![no_main]

use dynabase::{
    adapters::{outbound_webhook::signature, stripe_webhook::StripeWebhooks},
    settings::Secret,
};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "whsec_fuzz_fixed_secret";
const NOW: i64 = 1_764_892_800;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (header, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let header = String::from_utf8_lossy(header);
    let body = String::from_utf8_lossy(body);
    let webhooks = StripeWebhooks::new(Secret::new(SECRET));
    if mode == 0 {
        let _ = webhooks.verify(&body, &header, NOW);
        return;
    }
    let stale = mode & 1 == 1;
    let t = if stale { NOW - 301 } else { NOW };
    let mut signed = signature(SECRET, &body, t);
    if mode & 2 == 2 {
        signed = format!("{header},{signed}");
    }
    let verified = webhooks.verify(&body, &signed, NOW);
    if stale && mode & 2 == 0 {
        assert!(verified.is_err(), "a stale signature was accepted");
    }
});
