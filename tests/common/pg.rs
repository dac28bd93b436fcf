//! Helpers for tests that run real PostgreSQL clients through the proxy:
//! the PostgreSQL service (`scripts/services.sh start`), organizations,
//! connections, the admin session routes, a minimal raw wire-protocol
//! client (for BackendKeyData and forged CancelRequests), and process
//! memory readings.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_postgres::{error::DbError, Client, NoTls};

use super::{client, require_service, Server, ADMIN_TOKEN};

/// The PostgreSQL service, or `None` (test skipped) when it is not running.
/// Honors `DYNABASE_TEST_PG_ADDR`, else `DYNABASE_TEST_PG_HOST`/`_PORT`.
pub fn pg_service() -> Option<String> {
    let host = env_or("DYNABASE_TEST_PG_HOST", "127.0.0.1");
    let port = env_or("DYNABASE_TEST_PG_PORT", "5432");
    require_service("DYNABASE_TEST_PG_ADDR", &format!("{host}:{port}"))
        .map(|url| url.split("://").last().unwrap_or(&url).to_owned())
}

pub fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The SCRAM superuser role and its password.
pub fn superuser() -> (String, String) {
    (
        env_or("DYNABASE_TEST_PG_SUPERUSER", "postgres"),
        env_or("DYNABASE_TEST_PG_PASSWORD", "postgres"),
    )
}

/// A role that PostgreSQL trusts from 127.0.0.1.
pub fn trust_user() -> String {
    env_or("DYNABASE_TEST_PG_TRUST_USER", "trust_user")
}

/// A role with an MD5 password, and the password.
pub fn md5_user() -> (String, String) {
    (
        env_or("DYNABASE_TEST_PG_MD5_USER", "md5_user"),
        env_or("DYNABASE_TEST_PG_MD5_PASSWORD", "md5pass"),
    )
}

/// A name no other test (in this or a parallel test process) uses:
/// `<prefix>_<pid>_<counter>_<nanos>`, lowercase, valid as an SQL
/// identifier.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A unique organization id (`[a-z0-9-]`, at most 63 characters).
pub fn unique_org(prefix: &str) -> String {
    unique(prefix).replace('_', "-")
}

/// Creates an organization through the admin API; panics unless 201.
pub async fn create_org(server: &Server, id: &str, tier: &str, upstream: &str) {
    let created = client()
        .post(server.url("/admin/orgs"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({
            "id": id,
            "name": format!("Test {id}"),
            "tier": tier,
            "upstream": upstream,
        }))
        .send()
        .await
        .expect("POST /admin/orgs");
    let status = created.status();
    let body = created.text().await.unwrap_or_default();
    assert_eq!(status, 201, "creating org {id}: {body}");
}

/// A libpq-style connection string for `user` through the proxy.
pub fn conninfo(server: &Server, user: &str, dbname: &str, password: Option<&str>) -> String {
    let mut s = format!(
        "host=127.0.0.1 port={} user={user} dbname={dbname} sslmode=disable connect_timeout=10",
        server.proxy_port()
    );
    if let Some(p) = password {
        s.push_str(&format!(" password={p}"));
    }
    s
}

/// A tokio-postgres session through the proxy; the connection runs on its
/// own task, whose result tells how the session ended.
pub struct Session {
    pub client: Client,
    pub connection: JoinHandle<Result<(), tokio_postgres::Error>>,
}

pub async fn try_connect(conninfo: &str) -> Result<Session, tokio_postgres::Error> {
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_postgres::connect(conninfo, NoTls),
    )
    .await
    .expect("connecting through the proxy hung for 20 s")?;
    Ok(Session {
        client,
        connection: tokio::spawn(connection),
    })
}

pub async fn connect(conninfo: &str) -> Session {
    try_connect(conninfo)
        .await
        .unwrap_or_else(|e| panic!("connect {conninfo}: {e:?}"))
}

/// The ErrorResponse a failed connection attempt got; panics if it worked
/// or failed without one.
pub async fn connect_error(conninfo: &str) -> DbError {
    match try_connect(conninfo).await {
        Ok(_) => panic!("connection {conninfo} was expected to be refused"),
        Err(e) => e
            .as_db_error()
            .cloned()
            .unwrap_or_else(|| panic!("no ErrorResponse for {conninfo}: {e:?}")),
    }
}

/// The SQLSTATE of a tokio-postgres error, if it carries one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_owned())
}

/// `GET /admin/orgs/{org}/connections` as JSON.
pub async fn sessions(server: &Server, org: &str) -> Vec<serde_json::Value> {
    let resp = client()
        .get(server.url(&format!("/admin/orgs/{org}/connections")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET connections");
    assert_eq!(resp.status(), 200, "GET /admin/orgs/{org}/connections");
    resp.json().await.expect("connections JSON")
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after
/// `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the org has exactly `n` proxy sessions; returns them.
pub async fn wait_for_sessions(server: &Server, org: &str, n: usize) -> Vec<serde_json::Value> {
    eventually(
        Duration::from_secs(15),
        &format!("{n} sessions for org {org}"),
        || async {
            let s = sessions(server, org).await;
            (s.len() == n).then_some(s)
        },
    )
    .await
}

/// A field of a `/proc/<pid>/status` line such as `VmRSS:  1234 kB`, in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

// ---------------------------------------------------------------------------
// A minimal raw wire-protocol client: what tokio-postgres hides (the
// BackendKeyData) and what it cannot send (a CancelRequest with any key).
// ---------------------------------------------------------------------------

/// A session opened with a hand-written StartupMessage (trust auth only).
pub struct RawSession {
    stream: TcpStream,
    pub process_id: i32,
    pub secret_key: i32,
}

/// An ErrorResponse, as (SQLSTATE, message).
pub type RawError = (String, String);

fn error_fields(body: &[u8]) -> RawError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

async fn read_message(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let tag = stream.read_u8().await?;
    let len = stream.read_i32().await?;
    let mut body = vec![0u8; usize::try_from(len - 4).unwrap_or(0)];
    stream.read_exact(&mut body).await?;
    Ok((tag, body))
}

impl RawSession {
    /// Connects to `addr` as `user` to `database`; PostgreSQL must trust
    /// the role. Returns the ErrorResponse if the session is refused.
    pub async fn connect(addr: &str, user: &str, database: &str) -> Result<Self, RawError> {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ("io".to_owned(), e.to_string()))?;
        let packet = startup_packet(user, database);
        stream
            .write_all(&packet)
            .await
            .map_err(|e| ("io".to_owned(), e.to_string()))?;
        let mut key = None;
        loop {
            let (tag, body) = read_message(&mut stream)
                .await
                .map_err(|e| ("io".to_owned(), e.to_string()))?;
            match tag {
                b'R' if body.get(..4) != Some(&[0u8; 4][..]) => {
                    return Err(("auth".to_owned(), "password requested".to_owned()))
                }
                b'K' => {
                    let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                    key = Some((pid, secret));
                }
                b'E' => return Err(error_fields(&body)),
                b'Z' => break,
                _ => {}
            }
        }
        let (process_id, secret_key) = key.expect("BackendKeyData before ReadyForQuery");
        Ok(Self {
            stream,
            process_id,
            secret_key,
        })
    }

    /// Runs one simple Query; returns the first column of each row, or its
    /// first ErrorResponse.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> std::io::Result<Result<Vec<Option<String>>, RawError>> {
        self.send(&query_message(sql)).await?;
        self.read_results().await
    }

    /// Writes `bytes` as they are: whole messages, or pieces of them.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads one cycle's answer up to ReadyForQuery: the first column of
    /// each row, or the first ErrorResponse.
    pub async fn read_results(&mut self) -> std::io::Result<Result<Vec<Option<String>>, RawError>> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = read_message(&mut self.stream).await?;
            match tag {
                b'E' if error.is_none() => error = Some(error_fields(&body)),
                b'D' if body.len() >= 6 => {
                    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                    rows.push(
                        usize::try_from(len)
                            .ok()
                            .map(|len| String::from_utf8_lossy(&body[6..6 + len]).into_owned()),
                    );
                }
                b'Z' => return Ok(error.map_or(Ok(rows), Err)),
                _ => {}
            }
        }
    }
}

/// Opens a connection as `user` and stops after the server's first
/// authentication request (for a password role: AuthenticationSASL),
/// never answering it. Returns the socket and that request's code.
pub async fn stall_in_authentication(addr: &str, user: &str, database: &str) -> (TcpStream, i32) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to proxy");
    stream
        .write_all(&startup_packet(user, database))
        .await
        .expect("send StartupMessage");
    let (tag, body) = tokio::time::timeout(Duration::from_secs(10), read_message(&mut stream))
        .await
        .expect("an authentication request within 10 s")
        .expect("read authentication request");
    assert_eq!(tag, b'R', "authentication request, got {:?}", tag as char);
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    (stream, code)
}

/// Reads until the peer closes; returns the first ErrorResponse, if any.
pub async fn error_then_close(stream: &mut TcpStream) -> Option<RawError> {
    let mut first = None;
    while let Ok((tag, body)) = read_message(stream).await {
        if tag == b'E' && first.is_none() {
            first = Some(error_fields(&body));
        }
    }
    first
}

/// A simple-protocol Query message for `sql`.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&i32::try_from(sql.len() + 5).unwrap().to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    msg
}

fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = i32::try_from(body.len() + 4)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// Sends a CancelRequest with the given key to `addr` and waits until the
/// proxy closes the connection (it answers nothing either way).
pub async fn send_cancel(addr: &str, process_id: i32, secret_key: i32) {
    let mut s = TcpStream::connect(addr).await.expect("connect for cancel");
    let mut packet = 16i32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_102i32.to_be_bytes());
    packet.extend_from_slice(&process_id.to_be_bytes());
    packet.extend_from_slice(&secret_key.to_be_bytes());
    s.write_all(&packet).await.expect("send CancelRequest");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "proxy kept a cancel connection open");
    assert!(rest.is_empty(), "a CancelRequest gets no reply");
}

/// `psql` through the proxy: no psqlrc, unaligned tuples-only output, stop
/// on the first error; the password (if any) in `PGPASSWORD`.
pub fn psql(conninfo: &str, password: Option<&str>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conninfo,
    ])
    .env_remove("PGOPTIONS")
    .env_remove("PGAPPNAME")
    .env("PGCONNECT_TIMEOUT", "10")
    .kill_on_drop(true);
    match password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
    cmd
}

/// Runs a command to completion within `limit`; returns (success, stdout,
/// stderr).
pub async fn run(mut cmd: tokio::process::Command, limit: Duration) -> (bool, String, String) {
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Random-ish 32-bit values without an extra dependency.
pub fn random_i32(salt: u64) -> i32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(salt);
    h.finish() as i32
}
