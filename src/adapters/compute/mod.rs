//! Compute drivers: the adapters behind the actors' `ComputeDriver` port.
//! [`Drivers`] picks the adapter the organization's compute spec names.

pub mod command;
pub mod local;

use async_trait::async_trait;
use dynabase_actors::{
    domain::compute::ComputeSpec,
    scale_to_zero::{ComputeDriver, DriverError, DriverStatus},
    OrgId,
};

/// Every driver this binary has.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drivers;

#[async_trait]
impl ComputeDriver for Drivers {
    async fn suspend(&self, org: &OrgId, spec: &ComputeSpec) -> Result<(), DriverError> {
        match spec {
            ComputeSpec::AlwaysOn => Err(DriverError::Unsupported("always_on")),
            ComputeSpec::Local {
                data_dir, pg_bin, ..
            } => local::stop(data_dir, pg_bin.as_deref()).await,
            ComputeSpec::Command {
                suspend,
                timeout_ms,
                ..
            } => command::run("suspend", suspend, org, *timeout_ms)
                .await
                .map(drop),
        }
    }

    async fn wake(&self, org: &OrgId, spec: &ComputeSpec) -> Result<(), DriverError> {
        match spec {
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
            } => command::wake(org, wake, status.as_deref(), *timeout_ms).await,
        }
    }

    async fn status(&self, org: &OrgId, spec: &ComputeSpec) -> Result<DriverStatus, DriverError> {
        match spec {
            ComputeSpec::AlwaysOn => Ok(DriverStatus::Running),
            ComputeSpec::Local {
                data_dir, pg_bin, ..
            } => local::status(data_dir, pg_bin.as_deref()).await,
            ComputeSpec::Command {
                status: Some(status),
                timeout_ms,
                ..
            } => Ok(
                match command::run("status", status, org, *timeout_ms).await {
                    Ok(_) => DriverStatus::Running,
                    Err(DriverError::Failed { .. }) => DriverStatus::Stopped,
                    Err(e) => return Err(e),
                },
            ),
            ComputeSpec::Command { status: None, .. } => {
                Err(DriverError::Unsupported("command (no status command)"))
            }
        }
    }
}
