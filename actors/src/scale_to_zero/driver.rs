//! The compute driver port: how a tenant database is stopped, started and
//! asked whether it runs. Adapters (`local`, `command`, `railway`) live in
//! the binary.

use async_trait::async_trait;

use crate::domain::organization::Organization;

/// What a driver could not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("the {0} driver cannot suspend or wake a database")]
    Unsupported(&'static str),
    #[error("{step} failed: {detail}")]
    Failed { step: &'static str, detail: String },
    #[error("{step} did not finish within {limit_ms} ms")]
    TimedOut { step: &'static str, limit_ms: u64 },
}

/// Whether the database runs, as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverStatus {
    Running,
    Stopped,
}

/// One port for every driver: the spec on the organization record
/// (`org.compute.spec`) says which adapter answers; a driver that probes
/// readiness over the network uses the organization's upstream.
#[async_trait]
pub trait ComputeDriver: Send + Sync + 'static {
    /// Stops the database. Stopping a stopped database succeeds.
    async fn suspend(&self, org: &Organization) -> Result<(), DriverError>;
    /// Starts the database and returns once it accepts connections.
    /// Starting a running database succeeds.
    async fn wake(&self, org: &Organization) -> Result<(), DriverError>;
    async fn status(&self, org: &Organization) -> Result<DriverStatus, DriverError>;
}
