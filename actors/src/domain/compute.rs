//! Where an organization's database runs and whether it is up: the
//! `compute` section of the organization record (docs/scale-to-zero.md).
//!
//! The section holds the operator's choice of driver and the scale-to-zero
//! state machine `active → suspending → suspended → waking → active`. Both
//! default, so records written before scale-to-zero existed load as an
//! always-on, active database.

use serde::{Deserialize, Serialize};

use super::time::UnixMillis;

/// Longest accepted driver timeout for `command` (an hour is already
/// longer than any client waits).
pub const MAX_COMMAND_TIMEOUT_MS: u64 = 3_600_000;

/// Why a compute section is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComputeSpecError {
    #[error("data_dir must be an absolute path")]
    RelativeDataDir,
    #[error("port must be a number from 1 to 65535")]
    BadPort,
    #[error("pg_bin must be an absolute path")]
    RelativePgBin,
    #[error("{0} must not be empty")]
    EmptyCommand(&'static str),
    #[error("timeout_ms must be from 1 to {MAX_COMMAND_TIMEOUT_MS}")]
    BadTimeout,
    #[error("{0} must not be empty")]
    EmptyId(&'static str),
}

/// How the organization's database is stopped and started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "driver", rename_all = "snake_case", deny_unknown_fields)]
pub enum ComputeSpec {
    /// Never stopped (today's behaviour; PRO and ENTERPRISE).
    #[default]
    AlwaysOn,
    /// A PostgreSQL data directory on this host, run with `pg_ctl`.
    Local {
        data_dir: String,
        /// Where the cluster listens (127.0.0.1); readiness is polled here.
        port: u16,
        /// Directory of `pg_ctl`; `None`: found on `PATH`.
        #[serde(default)]
        pg_bin: Option<String>,
    },
    /// Operator-given shell commands (systemd, kubectl scale, docker …).
    /// The organization id is passed in `DYNABASE_ORG`.
    Command {
        suspend: String,
        wake: String,
        /// Exits 0 when the database runs; `None`: readiness is the wake
        /// command's own exit status.
        #[serde(default)]
        status: Option<String>,
        timeout_ms: u64,
    },
    /// A Railway service: its latest deployment is stopped and restarted
    /// through Railway's GraphQL API; the organization's upstream is the
    /// service's host, where readiness is probed.
    Railway {
        service_id: String,
        environment_id: String,
    },
}

impl ComputeSpec {
    /// Whether the database can be stopped at all.
    pub fn can_suspend(&self) -> bool {
        !matches!(self, ComputeSpec::AlwaysOn)
    }

    /// The driver's name for metrics and logs.
    pub fn driver_name(&self) -> &'static str {
        match self {
            ComputeSpec::AlwaysOn => "always_on",
            ComputeSpec::Local { .. } => "local",
            ComputeSpec::Command { .. } => "command",
            ComputeSpec::Railway { .. } => "railway",
        }
    }

    pub fn validate(&self) -> Result<(), ComputeSpecError> {
        match self {
            ComputeSpec::AlwaysOn => Ok(()),
            ComputeSpec::Local {
                data_dir,
                port,
                pg_bin,
            } => {
                if !data_dir.starts_with('/') {
                    return Err(ComputeSpecError::RelativeDataDir);
                }
                if *port == 0 {
                    return Err(ComputeSpecError::BadPort);
                }
                if pg_bin.as_deref().is_some_and(|b| !b.starts_with('/')) {
                    return Err(ComputeSpecError::RelativePgBin);
                }
                Ok(())
            }
            ComputeSpec::Command {
                suspend,
                wake,
                status,
                timeout_ms,
            } => {
                if suspend.trim().is_empty() {
                    return Err(ComputeSpecError::EmptyCommand("suspend"));
                }
                if wake.trim().is_empty() {
                    return Err(ComputeSpecError::EmptyCommand("wake"));
                }
                if status.as_deref().is_some_and(|s| s.trim().is_empty()) {
                    return Err(ComputeSpecError::EmptyCommand("status"));
                }
                if *timeout_ms == 0 || *timeout_ms > MAX_COMMAND_TIMEOUT_MS {
                    return Err(ComputeSpecError::BadTimeout);
                }
                Ok(())
            }
            ComputeSpec::Railway {
                service_id,
                environment_id,
            } => {
                if service_id.trim().is_empty() {
                    return Err(ComputeSpecError::EmptyId("service_id"));
                }
                if environment_id.trim().is_empty() {
                    return Err(ComputeSpecError::EmptyId("environment_id"));
                }
                Ok(())
            }
        }
    }
}

/// Where the database is in the scale-to-zero state machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Active,
    Suspending,
    Suspended,
    Waking,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Active => "active",
            Phase::Suspending => "suspending",
            Phase::Suspended => "suspended",
            Phase::Waking => "waking",
        }
    }
}

/// The stored state of the database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeState {
    #[serde(default)]
    pub phase: Phase,
    /// When `phase` was entered. Part of every claim name, so each suspend
    /// or wake of one state is done by exactly one replica.
    #[serde(default)]
    pub since: UnixMillis,
    /// The last driver failure, kept until the next success.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Wakes that completed, ever (the usage report shows them).
    #[serde(default)]
    pub cold_starts: u64,
    /// Driver time of the last completed wake.
    #[serde(default)]
    pub last_wake_ms: Option<u64>,
}

/// The `compute` section of an organization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compute {
    #[serde(default)]
    pub spec: ComputeSpec,
    #[serde(default)]
    pub state: ComputeState,
}

impl Compute {
    /// Moves to `phase` at `now`.
    pub fn enter(&mut self, phase: Phase, now: UnixMillis) {
        self.state.phase = phase;
        self.state.since = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_records_and_driver_shapes_load() {
        let c: Compute = serde_json::from_str("{}").unwrap();
        assert_eq!(c.spec, ComputeSpec::AlwaysOn);
        assert_eq!(c.state.phase, Phase::Active);
        let spec: ComputeSpec =
            serde_json::from_str(r#"{"driver":"local","data_dir":"/d","port":5999}"#).unwrap();
        assert!(spec.validate().is_ok());
        assert!(serde_json::from_str::<ComputeSpec>(r#"{"driver":"local","x":1}"#).is_err());
        let bad = ComputeSpec::Command {
            suspend: "true".into(),
            wake: " ".into(),
            status: None,
            timeout_ms: 10,
        };
        assert_eq!(bad.validate(), Err(ComputeSpecError::EmptyCommand("wake")));
        let railway: ComputeSpec = serde_json::from_str(
            r#"{"driver":"railway","service_id":"svc","environment_id":"env"}"#,
        )
        .unwrap();
        assert!(railway.validate().is_ok());
        assert_eq!(railway.driver_name(), "railway");
        let railway: ComputeSpec =
            serde_json::from_str(r#"{"driver":"railway","service_id":"svc","environment_id":" "}"#)
                .unwrap();
        assert_eq!(
            railway.validate(),
            Err(ComputeSpecError::EmptyId("environment_id"))
        );
    }
}
