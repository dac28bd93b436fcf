//! sqlx through the Dynabase proxy: runtime queries on a pool — the tier's
//! settings, a failed transaction rolled back, a statement prepared once and
//! reused, simple-protocol statements, COPY in, a large result, cancel, and
//! the proxy's refusals (53300, 53400), after which the pool keeps working.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use sqlx::{
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgDatabaseError, PgPool, PgPoolOptions, PgSslMode},
    Connection, PgConnection, Postgres, Row,
};

type Result<T = ()> = std::result::Result<T, String>;

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => {
            println!("not ok - environment: {name} is not set (run tests/clients/run.sh)");
            std::process::exit(1);
        }
    }
}

struct Settings {
    host: String,
    port: u16,
    role: String,
    password: String,
    database: String,
    org: String,
    statement_timeout: String,
    free_org: String,
    free_connections: u32,
    free_statement_timeout: String,
}

impl Settings {
    fn from_env() -> Self {
        Settings {
            host: env("DYNABASE_CLIENT_HOST"),
            port: env("DYNABASE_CLIENT_PORT").parse().expect("port"),
            role: env("DYNABASE_CLIENT_ROLE"),
            password: env("DYNABASE_CLIENT_PASSWORD"),
            database: env("DYNABASE_CLIENT_DATABASE"),
            org: env("DYNABASE_CLIENT_ORG"),
            statement_timeout: env("DYNABASE_CLIENT_ORG_STATEMENT_TIMEOUT"),
            free_org: env("DYNABASE_CLIENT_FREE_ORG"),
            free_connections: env("DYNABASE_CLIENT_FREE_CONNECTIONS")
                .parse()
                .expect("connections"),
            free_statement_timeout: env("DYNABASE_CLIENT_FREE_STATEMENT_TIMEOUT"),
        }
    }

    fn options(&self, org: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&format!("{}.{org}", self.role))
            .password(&self.password)
            .database(&self.database)
            .ssl_mode(PgSslMode::Disable)
            .application_name("sqlx-check")
    }

    async fn pool(&self, org: &str, size: u32) -> std::result::Result<PgPool, sqlx::Error> {
        PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.options(org))
            .await
    }
}

struct Report {
    failed: u32,
}

impl Report {
    async fn check<F: Future<Output = Result>>(&mut self, name: &str, check: F) {
        match check.await {
            Ok(()) => println!("ok - {name}"),
            Err(reason) => {
                self.failed += 1;
                let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
                println!("not ok - {name}: {reason}");
            }
        }
    }
}

fn expect(condition: bool, what: impl Into<String>) -> Result {
    if condition {
        Ok(())
    } else {
        Err(what.into())
    }
}

fn expect_contains(text: Option<&str>, part: &str, what: &str) -> Result {
    match text {
        Some(t) if t.to_lowercase().contains(&part.to_lowercase()) => Ok(()),
        _ => Err(format!("{what}: {part:?} not in {text:?}")),
    }
}

fn e(err: sqlx::Error) -> String {
    err.to_string()
}

/// The PostgreSQL error behind a sqlx error, if it carries one.
fn pg_error(err: &sqlx::Error) -> Option<&PgDatabaseError> {
    match err {
        sqlx::Error::Database(db) => db.try_downcast_ref::<PgDatabaseError>(),
        _ => None,
    }
}

fn expect_code<T>(result: std::result::Result<T, sqlx::Error>, code: &str, what: &str) -> Result {
    match result {
        Ok(_) => Err(format!("{what}: no error")),
        Err(err) => match pg_error(&err) {
            Some(pg) if pg.code() == code => Ok(()),
            _ => Err(format!("{what}: {err}, expected SQLSTATE {code}")),
        },
    }
}

async fn show(conn: &mut PgConnection, setting: &str) -> Result<String> {
    let sql = match setting {
        "statement_timeout" => "SHOW statement_timeout",
        _ => "SHOW application_name",
    };
    sqlx::query_scalar(sql).fetch_one(conn).await.map_err(e)
}

// --- the main organization -------------------------------------------------

async fn tier_settings(s: &Settings, pool: &PgPool) -> Result {
    let mut conn = pool.acquire().await.map_err(e)?;
    let timeout = show(&mut conn, "statement_timeout").await?;
    expect(
        timeout == s.statement_timeout,
        format!(
            "statement_timeout {timeout:?}, expected {:?}",
            s.statement_timeout
        ),
    )?;
    let app = show(&mut conn, "application_name").await?;
    expect(
        app.contains(&s.org) && app.ends_with("sqlx-check"),
        format!("application_name {app:?}"),
    )
}

async fn transaction_error_then_rollback(conn: &mut PgConnection) -> Result {
    sqlx::raw_sql(
        "CREATE TEMP TABLE tx_check (id int PRIMARY KEY); INSERT INTO tx_check VALUES (1)",
    )
    .execute(&mut *conn)
    .await
    .map_err(e)?;
    let mut tx = conn.begin().await.map_err(e)?;
    sqlx::query("INSERT INTO tx_check VALUES ($1)")
        .bind(2)
        .execute(&mut *tx)
        .await
        .map_err(e)?;
    let duplicate = sqlx::query("INSERT INTO tx_check VALUES ($1)")
        .bind(1)
        .execute(&mut *tx)
        .await;
    expect_code(duplicate, "23505", "duplicate key")?;
    let after = sqlx::query("SELECT 1").execute(&mut *tx).await;
    expect_code(after, "25P02", "query in a failed transaction")?;
    tx.rollback().await.map_err(e)?;
    let ids: Vec<i32> = sqlx::query_scalar("SELECT array_agg(id ORDER BY id) FROM tx_check")
        .fetch_one(&mut *conn)
        .await
        .map_err(e)?;
    expect(ids == [1], format!("rows after rollback {ids:?}"))
}

async fn prepared_statement_reused(conn: &mut PgConnection) -> Result {
    // sqlx prepares a query once per connection and keeps it in its
    // statement cache.
    for i in 0..200i32 {
        let row = sqlx::query("SELECT $1::int4 * 2, $2::text")
            .bind(i)
            .bind(format!("n{i}"))
            .fetch_one(&mut *conn)
            .await
            .map_err(e)?;
        let (n, t): (i32, String) = (row.get(0), row.get(1));
        expect(
            n == i * 2 && t == format!("n{i}"),
            format!("execution {i}: {n} {t}"),
        )?;
    }
    let named: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int4 * 2, $2::text'",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(e)?;
    expect(
        named == 1,
        format!("{named} server-side prepared statements for the query"),
    )
}

async fn simple_protocol(conn: &mut PgConnection) -> Result {
    let done = sqlx::raw_sql(
        "CREATE TEMP TABLE simple_check (id int); \
         INSERT INTO simple_check SELECT generate_series(1, 10); \
         UPDATE simple_check SET id = id + 1",
    )
    .execute(&mut *conn)
    .await
    .map_err(e)?;
    expect(
        done.rows_affected() == 20,
        format!("{} rows affected", done.rows_affected()),
    )
}

async fn copy_in(conn: &mut PgConnection) -> Result {
    sqlx::raw_sql("CREATE TEMP TABLE copied (id int, name text)")
        .execute(&mut *conn)
        .await
        .map_err(e)?;
    let mut data = String::new();
    for i in 0..20_000 {
        data.push_str(&format!("{i}\tname {i}\n"));
    }
    let mut copy = conn
        .copy_in_raw("COPY copied (id, name) FROM STDIN")
        .await
        .map_err(e)?;
    for chunk in data.as_bytes().chunks(64 * 1024) {
        copy.send(chunk).await.map_err(e)?;
    }
    let rows = copy.finish().await.map_err(e)?;
    expect(rows == 20_000, format!("{rows} rows copied"))?;
    let sum: i64 = sqlx::query_scalar("SELECT sum(id) FROM copied")
        .fetch_one(&mut *conn)
        .await
        .map_err(e)?;
    expect(sum == 19_999 * 20_000 / 2, format!("sum {sum}"))
}

async fn large_result(pool: &PgPool) -> Result {
    let rows = sqlx::query("SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g")
        .fetch_all(pool)
        .await
        .map_err(e)?;
    expect(rows.len() == 100_000, format!("{} rows", rows.len()))?;
    let last = &rows[99_999];
    expect(
        last.get::<i32, _>(0) == 100_000 && last.get::<String, _>(1).len() == 100,
        "last row",
    )
}

async fn cancel_long_query(pool: &PgPool) -> Result {
    // sqlx has no API that sends a CancelRequest (it keeps the
    // BackendKeyData to itself), so the long query is cancelled the other
    // way PostgreSQL offers: pg_cancel_backend from another connection of
    // the pool, through the proxy.
    let mut sleeper = pool.acquire().await.map_err(e)?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *sleeper)
        .await
        .map_err(e)?;
    let started = Instant::now();
    let sleeping = tokio::spawn(async move {
        let result = sqlx::query("SELECT pg_sleep(30)")
            .execute(&mut *sleeper)
            .await;
        (result, sleeper)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled: bool = sqlx::query_scalar("SELECT pg_cancel_backend($1)")
        .bind(pid)
        .fetch_one(pool)
        .await
        .map_err(e)?;
    expect(cancelled, "pg_cancel_backend returned false")?;
    let (result, mut sleeper) = tokio::time::timeout(Duration::from_secs(15), sleeping)
        .await
        .map_err(|_| "the cancelled query did not return within 15 s".to_owned())?
        .map_err(|err| err.to_string())?;
    expect_code(result, "57014", "cancelled query")?;
    let seconds = started.elapsed().as_secs_f64();
    expect(seconds < 5.0, format!("cancelled after {seconds:.1} s"))?;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *sleeper)
        .await
        .map_err(e)?;
    expect(one == 1, "connection usable after cancel")
}

// --- the FREE organization: refusals ---------------------------------------

async fn hold(pool: &PgPool, n: u32) -> Result<Vec<PoolConnection<Postgres>>> {
    let mut held = Vec::new();
    for i in 0..n {
        held.push(
            pool.acquire()
                .await
                .map_err(|err| format!("pool connection {}: {err}", i + 1))?,
        );
    }
    Ok(held)
}

async fn connection_limit(s: &Settings, pool: &PgPool) -> Result {
    let _held = hold(pool, s.free_connections).await?;
    let err = match PgConnection::connect_with(&s.options(&s.free_org)).await {
        Ok(_) => return Err("the connection past the limit was admitted".to_owned()),
        Err(err) => err,
    };
    let pg = pg_error(&err).ok_or_else(|| format!("no PostgreSQL error: {err}"))?;
    expect(pg.code() == "53300", format!("SQLSTATE {}", pg.code()))?;
    expect_contains(Some(pg.message()), "connection limit reached", "message")?;
    expect_contains(
        Some(pg.message()),
        &s.free_org,
        "message names the organization",
    )?;
    expect_contains(Some(pg.message()), "tier FREE", "message names the tier")?;
    expect_contains(pg.hint(), "upgrade to tier", "hint")
}

async fn rate_limit(s: &Settings, pool: &PgPool) -> Result {
    let held = hold(pool, s.free_connections).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(15);
    let tasks: Vec<_> = held
        .into_iter()
        .map(|mut conn| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut outcome = None;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Err(err) = sqlx::query("SELECT 1").execute(&mut *conn).await {
                        stop.store(true, Ordering::Relaxed);
                        outcome = Some(err);
                        break;
                    }
                }
                (outcome, conn)
            })
        })
        .collect();
    let mut refused = None;
    let mut held = Vec::new();
    for task in tasks {
        let (outcome, conn) = task.await.map_err(|err| err.to_string())?;
        held.push(conn);
        match outcome {
            Some(err) if pg_error(&err).is_some_and(|pg| pg.code() == "53400") => {
                refused.get_or_insert(err);
            }
            Some(err) => return Err(format!("unexpected error: {err}")),
            None => {}
        }
    }
    let err = refused.ok_or("no query was refused in 15 s")?;
    let pg = pg_error(&err).expect("checked above");
    expect_contains(Some(pg.message()), "rate limit", "message")?;
    expect_contains(
        Some(pg.message()),
        &s.free_org,
        "message names the organization",
    )?;
    expect_contains(Some(pg.message()), "tier FREE", "message names the tier")?;
    expect_contains(pg.detail(), "retry after", "detail")?;
    expect_contains(pg.hint(), "upgrade to tier", "hint")
}

async fn pool_after_refusals(s: &Settings, pool: &PgPool) -> Result {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut held = hold(pool, s.free_connections).await?;
    for conn in &mut held {
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut **conn)
            .await
            .map_err(e)?;
        expect(one == 1, "SELECT 1")?;
        let timeout = show(conn, "statement_timeout").await?;
        expect(
            timeout == s.free_statement_timeout,
            format!("FREE statement_timeout {timeout:?}"),
        )?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let s = Settings::from_env();
    let mut r = Report { failed: 0 };

    let pool = match s.pool(&s.org, 5).await {
        Ok(pool) => pool,
        Err(err) => {
            println!("not ok - connect as {}.{}: {err}", s.role, s.org);
            std::process::exit(1);
        }
    };
    r.check(
        "tier settings visible (SHOW statement_timeout)",
        tier_settings(&s, &pool),
    )
    .await;
    match pool.acquire().await {
        Ok(mut conn) => {
            r.check(
                "transaction with an error, then rollback",
                transaction_error_then_rollback(&mut conn),
            )
            .await;
            r.check(
                "prepared statement reused 200 times",
                prepared_statement_reused(&mut conn),
            )
            .await;
            r.check(
                "simple protocol: several statements in one query",
                simple_protocol(&mut conn),
            )
            .await;
            r.check("COPY FROM STDIN of 20,000 rows", copy_in(&mut conn))
                .await;
        }
        Err(err) => {
            r.failed += 1;
            println!("not ok - a pooled connection: {err}");
        }
    }
    r.check("large result (100,000 rows)", large_result(&pool))
        .await;
    r.check(
        "cancel of a long query (pg_cancel_backend; sqlx sends no CancelRequest)",
        cancel_long_query(&pool),
    )
    .await;
    pool.close().await;

    match s.pool(&s.free_org, s.free_connections).await {
        Ok(free) => {
            r.check(
                &format!(
                    "connection {} refused with 53300 and a hint",
                    s.free_connections + 1
                ),
                connection_limit(&s, &free),
            )
            .await;
            r.check(
                "queries past the QPS limit refused with 53400 and a hint",
                rate_limit(&s, &free),
            )
            .await;
            r.check(
                "pool works after the refusals",
                pool_after_refusals(&s, &free),
            )
            .await;
            free.close().await;
        }
        Err(err) => {
            r.failed += 1;
            println!("not ok - pool for {}.{}: {err}", s.role, s.free_org);
        }
    }
    std::process::exit(if r.failed == 0 { 0 } else { 1 });
}
