//! Real PostgreSQL clients through the proxy against real PostgreSQL: psql
//! (tier settings, application_name, `\copy`), pgbench in all three query
//! modes, tokio-postgres (prepared statements, pipelining, COPY both ways,
//! LISTEN/NOTIFY, errors inside transactions), a result of more than 100 MB
//! streamed with bounded proxy memory, and the authentication methods.

mod common;

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{
    pg::{
        self, connect, connect_error, conninfo, create_org, proc_status_bytes, psql, run, sqlstate,
        superuser, trust_user, unique, unique_org,
    },
    Server,
};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::{AsyncMessage, NoTls};

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------
// psql
// ---------------------------------------------------------------------------

#[tokio::test]
async fn psql_sees_the_tier_settings_and_application_name() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let free = unique_org("psql-free");
    let pro = unique_org("psql-pro");
    create_org(&server, &free, "free", &pg).await;
    create_org(&server, &pro, "pro", &pg).await;

    for (org, tier, expected) in [
        (&free, "free", ["4MB", "30s", "8MB"]),
        (&pro, "pro", ["64MB", "5min", "32MB"]),
    ] {
        let info = conninfo(
            &server,
            &format!("{}.{org}", trust_user()),
            "postgres",
            None,
        );
        let mut cmd = psql(&info, None);
        // A client's own values for the tier settings do not win, whether
        // sent as startup parameters (PGOPTIONS) or not at all.
        cmd.env("PGAPPNAME", "itest-app")
            .env("PGOPTIONS", "-c work_mem=1GB -c statement_timeout=0")
            .args([
                "-c",
                "show work_mem",
                "-c",
                "show statement_timeout",
                "-c",
                "show temp_buffers",
                "-c",
                "show application_name",
            ]);
        let (ok, out, err) = run(cmd, Duration::from_secs(30)).await;
        assert!(ok, "psql for {org} failed: {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "psql output: {out:?}");
        assert_eq!(&lines[..3], &expected, "tier {tier} settings");
        let app = lines[3];
        assert!(
            app.contains(org.as_str()) && app.to_lowercase().contains(tier),
            "application_name {app:?} names org {org} and tier {tier}"
        );
        assert!(
            app.ends_with("itest-app"),
            "application_name {app:?} keeps the client's own name"
        );
    }
}

#[tokio::test]
async fn psql_copy_from_and_to_a_csv_file() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let org = unique_org("psql-copy");
    create_org(&server, &org, "pro", &pg).await;
    // The superuser (SCRAM): PostgreSQL 15 lets only owners create in `public`.
    let (su, password) = superuser();
    let info = conninfo(&server, &format!("{su}.{org}"), "postgres", None);
    let table = unique("psql_copy");

    const ROWS: usize = 20_000;
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let mut csv = String::new();
    for i in 1..=ROWS {
        csv.push_str(&format!(
            "{i},\"name {i}, with a comma\",\"say \"\"hi\"\" {i}\"\n"
        ));
    }
    std::fs::write(&input, &csv).unwrap();

    let mut cmd = psql(&info, Some(&password));
    cmd.args([
        "-c",
        &format!("create table {table} (id int primary key, name text, note text)"),
        "-c",
        &format!("\\copy {table} from '{}' csv", input.display()),
        "-c",
        &format!("select count(*), sum(id) from {table}"),
        "-c",
        &format!("\\copy {table} to '{}' csv", output.display()),
    ]);
    let (ok, out, err) = run(cmd, Duration::from_secs(60)).await;
    let mut drop = psql(&info, Some(&password));
    drop.args(["-c", &format!("drop table if exists {table}")]);
    let (dropped, _, drop_err) = run(drop, Duration::from_secs(30)).await;
    assert!(ok, "psql \\copy failed: {err}");
    assert!(dropped, "drop table: {drop_err}");

    let expected_sum = ROWS * (ROWS + 1) / 2;
    assert_eq!(
        out.trim(),
        format!("{ROWS}|{expected_sum}"),
        "rows copied in"
    );
    let copied_out = std::fs::read_to_string(&output).unwrap();
    let mut got: Vec<&str> = copied_out.lines().collect();
    let mut want: Vec<&str> = csv.lines().collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got.len(), ROWS, "rows copied out");
    assert!(got == want, "\\copy to reproduces the input file");
}

// ---------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pgbench_runs_in_simple_extended_and_prepared_modes() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let org = unique_org("pgbench");
    create_org(&server, &org, "pro", &pg).await;
    let (su, password) = superuser();
    let user = format!("{su}.{org}");
    let database = unique("pgbench");

    let admin = connect(&conninfo(&server, &user, "postgres", Some(&password))).await;
    admin
        .client
        .simple_query(&format!("create database {database}"))
        .await
        .expect("create database through the proxy");

    let pgbench = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("pgbench");
        cmd.args(["-h", "127.0.0.1", "-p", &server.proxy_port().to_string()])
            .args(["-U", &user])
            .args(args)
            .arg(&database)
            .env("PGPASSWORD", &password)
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGOPTIONS")
            .kill_on_drop(true);
        cmd
    };

    let (ok, _, err) = run(pgbench(&["-i", "-s", "1", "-q"]), Duration::from_secs(120)).await;
    assert!(ok, "pgbench -i failed: {err}");

    let mut outcomes = Vec::new();
    for mode in ["simple", "extended", "prepared"] {
        // A modest fixed rate keeps the run within the PRO tier's query
        // rate, so the proxy's own limits cannot fail the benchmark.
        let (ok, out, err) = run(
            pgbench(&[
                "-S", "-M", mode, "-c", "4", "-j", "2", "-T", "3", "-R", "100", "-n",
            ]),
            Duration::from_secs(60),
        )
        .await;
        outcomes.push((mode, ok, out, err));
    }

    admin
        .client
        .simple_query(&format!("drop database if exists {database} with (force)"))
        .await
        .expect("drop database");

    for (mode, ok, out, err) in outcomes {
        assert!(ok, "pgbench -M {mode} failed:\n{out}\n{err}");
        assert!(
            out.contains("number of failed transactions: 0"),
            "pgbench -M {mode}: no failed transactions:\n{out}\n{err}"
        );
        assert!(
            out.lines().any(|l| l.starts_with("tps = ")),
            "pgbench -M {mode} reports tps:\n{out}"
        );
        let processed: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|rest| rest.split('/').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("pgbench -M {mode} reports transactions:\n{out}"));
        assert!(processed > 0, "pgbench -M {mode} processed transactions");
    }
}

// ---------------------------------------------------------------------------
// tokio-postgres
// ---------------------------------------------------------------------------

async fn pro_org(server: &Server, pg: &str, prefix: &str) -> String {
    let org = unique_org(prefix);
    create_org(server, &org, "pro", pg).await;
    conninfo(server, &format!("{}.{org}", trust_user()), "postgres", None)
}

#[tokio::test]
async fn prepared_statements_with_parameters_and_pipelined_queries() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let info = pro_org(&server, &pg, "prepared").await;
    let s = connect(&info).await;
    let c = &s.client;

    c.batch_execute(
        "create temp table items (id int primary key, name text, price numeric, note text)",
    )
    .await
    .unwrap();
    let insert = c
        .prepare("insert into items (id, name, price, note) values ($1, $2, $3::text::numeric, $4)")
        .await
        .unwrap();
    for i in 1..=50i32 {
        let note: Option<&str> = if i % 2 == 0 { Some("even") } else { None };
        let n = c
            .execute(
                &insert,
                &[&i, &format!("item {i} ✓"), &format!("{i}.25"), &note],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    let by_id = c
        .prepare("select name, price::text, note from items where id = $1")
        .await
        .unwrap();
    for i in [1i32, 2, 49, 50] {
        let row = c.query_one(&by_id, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("item {i} ✓"));
        assert_eq!(row.get::<_, String>(1), format!("{i}.25"));
        assert_eq!(
            row.get::<_, Option<String>>(2).as_deref(),
            (i % 2 == 0).then_some("even")
        );
    }
    let none = c.query_opt(&by_id, &[&1000i32]).await.unwrap();
    assert!(none.is_none());
    let total: i64 = c
        .query_one(
            "select count(*) from items where id between $1 and $2",
            &[&10i32, &19i32],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 10);

    // Queries issued concurrently on one connection are pipelined by
    // tokio-postgres; every answer must reach the right query.
    let echo = c.prepare("select $1::int * 2, $2::text").await.unwrap();
    let answers = futures_util::future::join_all((0..25i32).map(|i| {
        let echo = echo.clone();
        async move {
            let row = c.query_one(&echo, &[&i, &format!("n{i}")]).await.unwrap();
            (row.get::<_, i32>(0), row.get::<_, String>(1))
        }
    }))
    .await;
    for (i, (doubled, text)) in answers.into_iter().enumerate() {
        assert_eq!(doubled, 2 * i as i32);
        assert_eq!(text, format!("n{i}"));
    }
}

#[tokio::test]
async fn copy_in_and_copy_out_with_row_counts() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let info = pro_org(&server, &pg, "copy").await;
    let s = connect(&info).await;
    let c = &s.client;
    c.batch_execute("create temp table copied (id int, name text)")
        .await
        .unwrap();

    const ROWS: u64 = 50_000;
    let sink = c
        .copy_in::<_, VecDeque<u8>>("copy copied (id, name) from stdin")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let mut sent = Vec::new();
    for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(1000) {
        let mut data = Vec::new();
        for i in chunk {
            data.extend_from_slice(format!("{i}\trow\\t{i}\n").as_bytes());
        }
        sent.extend_from_slice(&data);
        sink.send(VecDeque::from(data)).await.unwrap();
    }
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, ROWS, "COPY FROM STDIN row count");

    let row = c
        .query_one(
            "select count(*), sum(id)::bigint, min(name) from copied",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0) as u64, ROWS);
    assert_eq!(row.get::<_, i64>(1) as u64, ROWS * (ROWS + 1) / 2);
    assert_eq!(row.get::<_, String>(2), "row\t1");

    let out = c
        .copy_out("copy (select id, name from copied order by id) to stdout")
        .await
        .unwrap();
    let chunks: Vec<_> = out.try_collect().await.unwrap();
    let received: Vec<u8> = chunks.iter().flat_map(|b| b.iter().copied()).collect();
    assert_eq!(
        received.iter().filter(|&&b| b == b'\n').count() as u64,
        ROWS,
        "COPY TO STDOUT rows"
    );
    assert!(received == sent, "COPY out returns exactly what went in");

    // The session is still in a clean state after both COPYs.
    let one: i32 = c.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn listen_and_notify_between_two_sessions() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let info = pro_org(&server, &pg, "notify").await;
    let channel = unique("chan");

    let (listener, mut connection) = tokio_postgres::connect(&info, NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(m) => {
                    if tx.send(m).is_err() {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    listener
        .batch_execute(&format!("listen {channel}"))
        .await
        .unwrap();

    let notifier = connect(&info).await;
    notifier
        .client
        .execute("select pg_notify($1, $2)", &[&channel, &"first payload"])
        .await
        .unwrap();
    notifier
        .client
        .batch_execute(&format!("notify {channel}, 'second'"))
        .await
        .unwrap();

    let mut payloads = Vec::new();
    while payloads.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("notification within 10 s")
            .expect("listener connection alive");
        if let AsyncMessage::Notification(n) = message {
            assert_eq!(n.channel(), channel);
            payloads.push(n.payload().to_owned());
        }
    }
    assert_eq!(payloads, ["first payload", "second"]);

    // Notices are relayed as well.
    listener
        .batch_execute("do $$ begin raise notice 'hello from plpgsql'; end $$")
        .await
        .unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Some(AsyncMessage::Notice(n)) => return n,
                Some(_) => continue,
                None => panic!("listener connection ended"),
            }
        }
    })
    .await
    .expect("notice within 10 s");
    assert_eq!(notice.message(), "hello from plpgsql");

    drop(listener);
    let ended = tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("listener connection ends after the client is dropped")
        .unwrap();
    assert!(
        ended.is_ok(),
        "listener connection ended cleanly: {ended:?}"
    );
}

#[tokio::test]
async fn an_error_inside_a_transaction_then_rollback_keeps_the_session_usable() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let info = pro_org(&server, &pg, "txerr").await;
    let mut s = connect(&info).await;
    s.client
        .batch_execute("create temp table ledger (n int)")
        .await
        .unwrap();

    // Extended protocol, via a Transaction.
    let tx = s.client.transaction().await.unwrap();
    tx.execute("insert into ledger values ($1)", &[&1i32])
        .await
        .unwrap();
    let err = tx.query_one("select 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"), "{err:?}");
    let aborted = tx.query_one("select 1", &[]).await.unwrap_err();
    assert_eq!(
        sqlstate(&aborted).as_deref(),
        Some("25P02"),
        "the transaction is aborted: {aborted:?}"
    );
    tx.rollback().await.unwrap();

    // Simple protocol, by hand.
    let err = s
        .client
        .batch_execute("begin; insert into ledger values (2); select 1/0; commit;")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"));
    s.client.batch_execute("rollback").await.unwrap();

    let count: i64 = s
        .client
        .query_one("select count(*) from ledger", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "both transactions rolled back");
    s.client
        .batch_execute("begin; insert into ledger values (3); commit")
        .await
        .unwrap();
    let count: i64 = s
        .client
        .query_one("select count(*) from ledger", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "the session still works");
    assert!(!s.client.is_closed());
}

// ---------------------------------------------------------------------------
// Large results: bounded memory
// ---------------------------------------------------------------------------

/// Samples the proxy's VmRSS every 10 ms until stopped; returns the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = proc_status_bytes(pid, "VmRSS") {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Self { stop, peak, thread }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

/// Resets the kernel's peak-RSS mark (VmHWM) of `pid`; false if not allowed.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

#[tokio::test]
async fn results_and_copy_data_over_100_mb_stream_through_with_bounded_memory() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let info = pro_org(&server, &pg, "bigresult").await;
    let pid = server.child.id();
    let s = connect(&info).await;
    s.client.simple_query("select 1").await.unwrap();

    const ROWS: i64 = 110_000;
    const WIDTH: i64 = 1000;
    let reset = reset_peak_rss(pid);
    let baseline = proc_status_bytes(pid, "VmRSS").expect("VmRSS of the proxy");
    let sampler = RssSampler::start(pid);

    // Server → client: 110 MB of rows. The reader pauses part-way, so the
    // proxy must apply backpressure rather than buffer what keeps coming.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 0] = [];
    let rows = s
        .client
        .query_raw(
            &format!("select repeat('x', {WIDTH}) from generate_series(1, {ROWS})"),
            params,
        )
        .await
        .unwrap();
    futures_util::pin_mut!(rows);
    let (mut count, mut bytes) = (0i64, 0i64);
    let read = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(row) = rows.next().await {
            let row = row.unwrap();
            bytes += row.get::<_, &str>(0).len() as i64;
            count += 1;
            if count == 1000 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the large result arrived within 120 s");
    assert_eq!(count, ROWS);
    assert_eq!(bytes, ROWS * WIDTH);
    assert!(bytes as u64 >= 100 * 1_000_000);

    // A single value (one DataRow message) larger than the memory bound.
    const BIG: usize = 100 * 1024 * 1024;
    let big = tokio::time::timeout(
        Duration::from_secs(120),
        s.client
            .query_one(&format!("select repeat('z', {BIG})"), &[]),
    )
    .await
    .expect("a 100 MiB value within 120 s")
    .unwrap();
    let value: &str = big.get(0);
    assert_eq!(value.len(), BIG);
    assert!(value.bytes().all(|b| b == b'z'));
    drop(big);

    // Client → server: 110 MB of COPY data, parsed and discarded, then one
    // CopyData message of 100 MiB.
    s.client
        .batch_execute("create temp table sink (line text)")
        .await
        .unwrap();
    let sink = s
        .client
        .copy_in::<_, VecDeque<u8>>("copy sink from stdin where false")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let line = format!("{}\n", "y".repeat(WIDTH as usize - 1));
    let chunk: Vec<u8> = line.repeat(1000).into_bytes();
    let sent = tokio::time::timeout(Duration::from_secs(120), async {
        for _ in 0..ROWS / 1000 {
            sink.send(VecDeque::from(chunk.clone())).await.unwrap();
        }
        let mut one_message = "w".repeat(BIG - 1).into_bytes();
        one_message.push(b'\n');
        sink.send(VecDeque::from(one_message)).await.unwrap();
        sink.finish().await.unwrap()
    })
    .await
    .expect("COPY of 210 MB within 120 s");
    assert_eq!(sent, 0, "WHERE false keeps no rows");

    let peak_sampled = sampler.finish();
    eprintln!(
        "proxy RSS: baseline {} KiB, sampled peak {} KiB, VmHWM {:?} KiB (reset: {reset})",
        baseline / 1024,
        peak_sampled / 1024,
        proc_status_bytes(pid, "VmHWM").map(|b| b / 1024)
    );
    let growth_sampled = peak_sampled.saturating_sub(baseline);
    assert!(
        growth_sampled < 64 * MIB,
        "proxy RSS grew by {} MiB (baseline {} MiB, peak {} MiB) while streaming 420 MB",
        growth_sampled / MIB,
        baseline / MIB,
        peak_sampled / MIB
    );
    if reset {
        let hwm = proc_status_bytes(pid, "VmHWM").expect("VmHWM");
        let growth = hwm.saturating_sub(baseline);
        assert!(
            growth < 64 * MIB,
            "proxy peak RSS (VmHWM) grew by {} MiB over a {} MiB baseline",
            growth / MIB,
            baseline / MIB
        );
    }
    let one: i32 = s.client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

// ---------------------------------------------------------------------------
// Authentication methods
// ---------------------------------------------------------------------------

#[tokio::test]
async fn trust_and_scram_pass_through_and_md5_is_refused_clearly() {
    let Some(pg) = pg::pg_service() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let org = unique_org("auth");
    create_org(&server, &org, "starter", &pg).await;

    // trust: no password at all.
    let trust = trust_user();
    let s = connect(&conninfo(
        &server,
        &format!("{trust}.{org}"),
        "postgres",
        None,
    ))
    .await;
    let who: String = s
        .client
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, trust, "the role is forwarded without the org");

    // SCRAM-SHA-256 relayed end to end.
    let (su, password) = superuser();
    let s = connect(&conninfo(
        &server,
        &format!("{su}.{org}"),
        "postgres",
        Some(&password),
    ))
    .await;
    let who: String = s
        .client
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, su);

    // MD5: refused by design, with a reason that names MD5.
    let (md5, md5_password) = pg::md5_user();
    let err = connect_error(&conninfo(
        &server,
        &format!("{md5}.{org}"),
        "postgres",
        Some(&md5_password),
    ))
    .await;
    assert_eq!(err.code().code(), "28000", "{err:?}");
    assert!(err.message().contains("MD5"), "message: {}", err.message());
    assert!(err.hint().is_some_and(|h| h.contains("SCRAM")), "{err:?}");
}
