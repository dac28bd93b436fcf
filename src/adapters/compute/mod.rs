//! Compute drivers: the adapters behind the actors' `ComputeDriver` port.
//! [`Drivers`] picks the adapter the organization's compute spec names.

pub mod command;
pub mod local;
pub mod railway;

use async_trait::async_trait;
use dynabase_actors::{
    domain::compute::ComputeSpec,
    scale_to_zero::{ComputeDriver, DriverError, DriverStatus},
    Organization,
};

/// Every driver this binary has.
#[derive(Clone)]
pub struct Drivers {
    railway: railway::RailwayCompute,
}

impl Drivers {
    pub fn new(railway: railway::RailwayCompute) -> Self {
        Self { railway }
    }
}

#[async_trait]
impl ComputeDriver for Drivers {
    async fn suspend(&self, org: &Organization) -> Result<(), DriverError> {
        match &org.compute.spec {
            ComputeSpec::AlwaysOn => Err(DriverError::Unsupported("always_on")),
            ComputeSpec::Local {
                data_dir, pg_bin, ..
            } => local::stop(data_dir, pg_bin.as_deref()).await,
            ComputeSpec::Command {
                suspend,
                timeout_ms,
                ..
            } => command::run("suspend", suspend, &org.id, *timeout_ms)
                .await
                .map(drop),
            ComputeSpec::Railway { .. } => self.railway.suspend(org).await,
        }
    }

    async fn wake(&self, org: &Organization) -> Result<(), DriverError> {
        match &org.compute.spec {
            ComputeSpec::AlwaysOn => Ok(()),
            ComputeSpec::Local {
                data_dir,
                port,
                pg_bin,
            } => local::start(data_dir, *port, pg_bin.as_deref()).await,
            ComputeSpec::Command {
                wake,
                status,
                timeout_ms,
                ..
            } => command::wake(&org.id, wake, status.as_deref(), *timeout_ms).await,
            ComputeSpec::Railway { .. } => self.railway.wake(org).await,
        }
    }

    async fn status(&self, org: &Organization) -> Result<DriverStatus, DriverError> {
        match &org.compute.spec {
            ComputeSpec::AlwaysOn => Ok(DriverStatus::Running),
            ComputeSpec::Local {
                data_dir, pg_bin, ..
            } => local::status(data_dir, pg_bin.as_deref()).await,
            ComputeSpec::Command {
                status: Some(status),
                timeout_ms,
                ..
            } => Ok(
                match command::run("status", status, &org.id, *timeout_ms).await {
                    Ok(_) => DriverStatus::Running,
                    Err(DriverError::Failed { .. }) => DriverStatus::Stopped,
                    Err(e) => return Err(e),
                },
            ),
            ComputeSpec::Command { status: None, .. } => {
                Err(DriverError::Unsupported("command (no status command)"))
            }
            ComputeSpec::Railway { .. } => self.railway.status(org).await,
        }
    }
}
