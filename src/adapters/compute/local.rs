//! The `local` driver: a PostgreSQL data directory on this host.
//!
//! Suspend is `pg_ctl -m fast stop` (a fast shutdown checkpoints, so the
//! next start replays no WAL). Wake is `pg_ctl start -W` — without pg_ctl's
//! own wait, which checks only ten times a second — and then a readiness
//! probe every few milliseconds: a StartupMessage for a role that need not
//! exist. While the server starts it answers 57P03 ("the database system is
//! starting up"); any other answer (an authentication request, or "role
//! does not exist") means it accepts connections.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use dynabase_actors::scale_to_zero::{DriverError, DriverStatus};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(2);
/// One probe's connect and first answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A start that takes longer than this failed (the coordinator's clients
/// stopped waiting long before; the next connection retries).
const START_LIMIT: Duration = Duration::from_secs(60);
/// `pg_ctl stop` with a fast shutdown; longer means something is wrong.
const STOP_LIMIT: Duration = Duration::from_secs(60);
/// The role the probe names; PostgreSQL logs one FATAL per wake for it.
const PROBE_ROLE: &str = "dynabase_readiness_probe";

fn pg_ctl(pg_bin: Option<&str>) -> PathBuf {
    pg_bin.map_or_else(|| PathBuf::from("pg_ctl"), |b| Path::new(b).join("pg_ctl"))
}

/// Runs pg_ctl; `Ok(exit code)`.
async fn run(
    step: &'static str,
    pg_bin: Option<&str>,
    args: &[&str],
    limit: Duration,
) -> Result<(i32, String), DriverError> {
    let mut cmd = tokio::process::Command::new(pg_ctl(pg_bin));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| DriverError::TimedOut {
            step,
            limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        })?
        .map_err(|e| DriverError::Failed {
            step,
            detail: format!("cannot run pg_ctl: {e}"),
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text.trim().to_owned()))
}

pub async fn status(data_dir: &str, pg_bin: Option<&str>) -> Result<DriverStatus, DriverError> {
    // pg_ctl status: 0 running, 3 not running, 4 no accessible data dir.
    match run("status", pg_bin, &["-D", data_dir, "status"], STOP_LIMIT).await? {
        (0, _) => Ok(DriverStatus::Running),
        (3, _) => Ok(DriverStatus::Stopped),
        (code, text) => Err(DriverError::Failed {
            step: "status",
            detail: format!("pg_ctl status exited with {code}: {text}"),
        }),
    }
}

pub async fn stop(data_dir: &str, pg_bin: Option<&str>) -> Result<(), DriverError> {
    if status(data_dir, pg_bin).await? == DriverStatus::Stopped {
        return Ok(());
    }
    match run(
        "suspend",
        pg_bin,
        &["-D", data_dir, "-m", "fast", "-w", "stop"],
        STOP_LIMIT,
    )
    .await?
    {
        (0, _) => Ok(()),
        (code, text) => Err(DriverError::Failed {
            step: "suspend",
            detail: format!("pg_ctl stop exited with {code}: {text}"),
        }),
    }
}

pub async fn start(data_dir: &str, port: u16, pg_bin: Option<&str>) -> Result<(), DriverError> {
    let started = Instant::now();
    let log = Path::new(data_dir).join("dynabase-start.log");
    let log = log.to_string_lossy();
    // Start first, ask later: `pg_ctl status` before every start would cost
    // a process spawn on the client's wait. A failed start of a running
    // server (a replica taking a wake over) is fine.
    let (code, text) = run(
        "wake",
        pg_bin,
        &["-D", data_dir, "-l", &log, "-W", "start"],
        START_LIMIT,
    )
    .await?;
    if code != 0 && status(data_dir, pg_bin).await? != DriverStatus::Running {
        return Err(DriverError::Failed {
            step: "wake",
            detail: format!("pg_ctl start exited with {code}: {text}"),
        });
    }
    loop {
        if probe(port).await {
            return Ok(());
        }
        if started.elapsed() > START_LIMIT {
            return Err(DriverError::TimedOut {
                step: "wake",
                limit_ms: u64::try_from(START_LIMIT.as_millis()).unwrap_or(u64::MAX),
            });
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Whether the server on 127.0.0.1:`port` accepts connections now.
pub async fn probe(port: u16) -> bool {
    probe_at("127.0.0.1", port).await
}

/// Whether the PostgreSQL server at `host`:`port` accepts connections now.
pub async fn probe_at(host: &str, port: u16) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, probe_once(host, port))
        .await
        .unwrap_or(false)
}

async fn probe_once(host: &str, port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((host, port)).await else {
        return false;
    };
    let _ = stream.set_nodelay(true);
    if stream.write_all(&startup_packet()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    if stream.read_exact(&mut head).await.is_err() {
        return false;
    }
    match head[0] {
        b'R' => true,
        b'E' => {
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
            let body_len = usize::try_from(len.saturating_sub(4))
                .unwrap_or(0)
                .min(4096);
            let mut body = vec![0u8; body_len];
            if stream.read_exact(&mut body).await.is_err() {
                return false;
            }
            // 57P03: still starting (or shutting down); anything else is
            // the running server refusing this made-up role.
            !body.split(|&b| b == 0).any(|field| field == b"C57P03")
        }
        _ => false,
    }
}

fn startup_packet() -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", PROBE_ROLE), ("database", PROBE_ROLE)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = i32::try_from(body.len() + 4).unwrap_or(i32::MAX);
    let mut packet = len.to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}
