//! Tenants at run time: one [`ConnectionActor`] per organization, created on
//! first use by the [`TenantRegistry`], owning that organization's tier and
//! counters.

pub mod connection_actor;
pub mod enforcement;
pub mod query_gate;
pub mod registry;
pub mod tier_lookup;

pub use connection_actor::{
    Admission, Admit, ApplyOrganization, ConnectionActor, ConnectionRefusal, Release, SharedPolicy,
    Snapshot, TenantSnapshot,
};
pub use query_gate::{GateVerdict, QueryGate, RateRefusal, SharedGate};
pub use registry::{
    refresh::{RefreshReport, TierStatus},
    RegistryError, TenantRegistry,
};
pub use tier_lookup::{Layer, TierLookup};
