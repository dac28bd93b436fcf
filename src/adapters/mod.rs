//! Adapters: the outside systems the platform talks to, behind the ports the
//! actors crate defines.

pub mod compute;
pub mod outbound_webhook;
pub mod railway;
pub mod redis;
pub mod redis_limits;
pub mod redis_tier_cache;
pub mod store;
pub mod stripe_billing;
pub mod stripe_webhook;
