//! Domain types, the store port and the actors of the Dynabase tier gateway.
//!
//! Everything that decides policy lives here: which tier an organization is on,
//! what that tier allows, and the actors that own that state at run time. The
//! binary package (`dynabase`) supplies adapters (MongoDB, the embedded store,
//! Redis, HTTP) that depend on this crate, never the other way round.
#![forbid(unsafe_code)]

pub mod billing;
pub mod calibration;
pub mod calibrator;
pub mod domain;
pub mod lifecycle;
pub mod memory_store;
pub mod ping;
pub mod rate_limiter;
pub mod scale_to_zero;
pub mod shared_limits;
pub mod store;
pub mod supervision;
pub mod supervisor;
pub mod tenant;
pub mod tier_cache;
pub mod usage_accumulator;
pub mod webhook_handler;

pub use domain::{
    catalog::{SessionSettings, TierCatalog, TierLimits, UsageFactor, UsageFactors},
    org_id::{OrgId, OrgIdError},
    organization::{Organization, PendingTierChange, Upstream, UpstreamError},
    tier::{Tier, TierParseError},
    time::{ClockAnchor, UnixMillis},
};
pub use store::{Store, StoreError};
