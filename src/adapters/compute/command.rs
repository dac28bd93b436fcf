//! The `command` driver: operator-given shell commands (systemd, kubectl
//! scale, docker …) run with `sh -c`, the organization id in
//! `DYNABASE_ORG`, a timeout, and their output in the logs.
//!
//! The shell is started through `setpriv --pdeathsig KILL` (util-linux)
//! where it exists, so it dies with the gateway: a replica killed half-way
//! through a suspend must not leave its stop running, to land after
//! another replica took the step over and woke the database.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use dynabase_actors::{scale_to_zero::DriverError, OrgId};

/// Output kept in a log line or an error, per stream.
const OUTPUT_LIMIT: usize = 2_000;
/// Between two runs of the status command while waiting for readiness.
const STATUS_POLL: Duration = Duration::from_millis(25);
/// Sets the parent-death signal and runs the shell.
const SETPRIV: &str = "/usr/bin/setpriv";

/// `sh`, killed when this process dies where setpriv exists.
fn shell() -> tokio::process::Command {
    if std::path::Path::new(SETPRIV).exists() {
        let mut cmd = tokio::process::Command::new(SETPRIV);
        cmd.args(["--pdeathsig", "KILL", "--", "sh"]);
        cmd
    } else {
        tokio::process::Command::new("sh")
    }
}

/// Runs `command`; `Ok(stdout)` when it exits 0 within `timeout_ms`. The
/// process is killed when the time is up.
pub async fn run(
    step: &'static str,
    command: &str,
    org: &OrgId,
    timeout_ms: u64,
) -> Result<String, DriverError> {
    let mut cmd = shell();
    cmd.arg("-c")
        .arg(command)
        .env("DYNABASE_ORG", org.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| DriverError::Failed {
        step,
        detail: format!("cannot run sh: {e}"),
    })?;
    let out = tokio::time::timeout(Duration::from_millis(timeout_ms), child.wait_with_output())
        .await
        .map_err(|_| {
            tracing::warn!(org = %org, step, timeout_ms, "compute command timed out; killed");
            DriverError::TimedOut {
                step,
                limit_ms: timeout_ms,
            }
        })?
        .map_err(|e| DriverError::Failed {
            step,
            detail: e.to_string(),
        })?;
    let stdout = clip(&out.stdout);
    let stderr = clip(&out.stderr);
    tracing::info!(org = %org, step, status = %out.status, %stdout, %stderr, "compute command ran");
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(DriverError::Failed {
            step,
            detail: format!("exited with {}: {}", out.status, stderr.trim()),
        })
    }
}

/// Runs the wake command, then (if there is one) the status command until
/// it succeeds, all within `timeout_ms`.
pub async fn wake(
    org: &OrgId,
    wake: &str,
    status: Option<&str>,
    timeout_ms: u64,
) -> Result<(), DriverError> {
    let started = Instant::now();
    run("wake", wake, org, timeout_ms).await?;
    let Some(status) = status else {
        return Ok(());
    };
    loop {
        let spent = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let Some(left) = timeout_ms.checked_sub(spent).filter(|l| *l > 0) else {
            return Err(DriverError::TimedOut {
                step: "wake",
                limit_ms: timeout_ms,
            });
        };
        match run("status", status, org, left).await {
            Ok(_) => return Ok(()),
            Err(DriverError::Failed { .. }) => tokio::time::sleep(STATUS_POLL).await,
            Err(e) => return Err(e),
        }
    }
}

fn clip(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(OUTPUT_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}
