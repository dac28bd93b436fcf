//! Adapters: the outside systems the platform talks to, behind the ports the
//! actors crate defines.

pub mod redis;
pub mod redis_limits;
pub mod store;
