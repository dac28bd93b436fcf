//! `RateLimiter`: Per-organization query-rate limiting (its policy arrives with the rate-limiter work; today it starts, answers Ping and is supervised).

/// The rate_limiter actor.
#[derive(Debug, Default)]
pub struct RateLimiter {
    restarts: u32,
}

crate::supervised_actor!(RateLimiter, "rate_limiter");
