#!/usr/bin/env python3
"""psycopg 3 through the Dynabase proxy: the tier's settings, a failed
transaction rolled back, server-side prepared statements, pipeline mode,
COPY both ways, a large result (client- and server-side cursors), cancel,
and the proxy's refusals (53300, 53400) seen through psycopg_pool."""

import threading
import time

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool

from common import (
    Report,
    Settings,
    expect,
    expect_contains,
    expect_rate_refusal,
)

S = Settings()
R = Report()


def connect(org, **kwargs):
    return psycopg.connect(
        host=S.host,
        port=S.port,
        user=S.user(org),
        password=S.password,
        dbname=S.database,
        sslmode="disable",
        connect_timeout=10,
        application_name="psycopg-check",
        **kwargs,
    )


def conninfo(org):
    return psycopg.conninfo.make_conninfo(
        host=S.host,
        port=S.port,
        user=S.user(org),
        password=S.password,
        dbname=S.database,
        sslmode="disable",
        connect_timeout=10,
        application_name="psycopg-check",
    )


def tier_settings(conn):
    timeout = conn.execute("SHOW statement_timeout").fetchone()[0]
    expect(timeout == S.statement_timeout, f"statement_timeout {timeout!r}, expected {S.statement_timeout!r}")
    app = conn.execute("SHOW application_name").fetchone()[0]
    expect(S.org in app and app.endswith("psycopg-check"), f"application_name {app!r}")


def transaction_error_then_rollback(conn):
    conn.execute("CREATE TEMP TABLE tx_check (id int PRIMARY KEY)")
    conn.commit()
    conn.execute("INSERT INTO tx_check VALUES (1)")
    conn.commit()
    conn.execute("INSERT INTO tx_check VALUES (2)")
    try:
        conn.execute("INSERT INTO tx_check VALUES (1)")
        raise AssertionError("duplicate key was accepted")
    except errors.UniqueViolation as e:
        expect(e.diag.sqlstate == "23505", f"SQLSTATE {e.diag.sqlstate}")
    try:
        conn.execute("SELECT 1")
        raise AssertionError("a failed transaction accepted a query")
    except errors.InFailedSqlTransaction:
        pass
    conn.rollback()
    rows = conn.execute("SELECT array_agg(id ORDER BY id) FROM tx_check").fetchone()[0]
    expect(rows == [1], f"rows after rollback {rows}")
    conn.commit()


def prepared_statement_reused(conn):
    conn.prepare_threshold = 2
    query = "SELECT %s::int * 2, %s::text"
    for i in range(200):
        row = conn.execute(query, (i, f"n{i}")).fetchone()
        expect(row == (i * 2, f"n{i}"), f"execution {i}: {row}")
    # psycopg prepared it on the server once and reused it.
    named = conn.execute(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int * 2, $2::text'"
    ).fetchone()[0]
    expect(named == 1, f"{named} server-side prepared statements for the query")
    conn.rollback()


def pipeline_mode(conn):
    conn.execute("CREATE TEMP TABLE pipe (id int, note text)")
    conn.commit()
    with conn.pipeline() as p:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO pipe VALUES (%s, %s)", [(i, f"row {i}") for i in range(500)])
            counts = []
            for i in range(20):
                counts.append(conn.execute("SELECT count(*) FROM pipe WHERE id < %s", (i * 10,)))
            p.sync()
            got = [c.fetchone()[0] for c in counts]
    expect(got == [i * 10 for i in range(20)], f"pipelined counts {got}")
    conn.commit()
    # An error inside a pipeline aborts the rest up to its sync, then the
    # connection goes on.
    try:
        with conn.pipeline():
            conn.execute("SELECT 1/0")
            conn.execute("SELECT 2")
        raise AssertionError("division by zero accepted in a pipeline")
    except errors.DivisionByZero:
        pass
    conn.rollback()
    expect(conn.execute("SELECT count(*) FROM pipe").fetchone()[0] == 500, "rows after the pipeline")
    conn.commit()


def copy_both_ways(conn):
    conn.execute("CREATE TEMP TABLE copied (id int, name text, note text)")
    n = 20_000
    with conn.cursor() as cur:
        with cur.copy("COPY copied (id, name, note) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row((i, f"name {i}, with a comma", f'say "hi"\t{i}'))
        back = []
        with cur.copy("COPY (SELECT id, name, note FROM copied ORDER BY id) TO STDOUT") as copy:
            copy.set_types(["int4", "text", "text"])
            for row in copy.rows():
                back.append(row)
        expect(len(back) == n, f"{len(back)} rows copied out")
        expect(back[7] == (7, "name 7, with a comma", 'say "hi"\t7'), f"row 7: {back[7]}")
        # Binary COPY out too.
        total = 0
        with cur.copy("COPY (SELECT id FROM copied) TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(["int4"])
            for (i,) in copy.rows():
                total += i
        expect(total == n * (n - 1) // 2, f"binary COPY sum {total}")
    conn.commit()


def large_result(conn):
    query = "SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g"
    rows = conn.execute(query).fetchall()
    expect(len(rows) == 100_000, f"{len(rows)} rows")
    expect(rows[-1][0] == 100_000 and len(rows[-1][1]) == 100, f"last row {rows[-1][0]}")
    # A server-side cursor: FETCH in batches inside one transaction.
    count = 0
    with conn.cursor(name="big") as cur:
        cur.itersize = 5000
        cur.execute(query)
        for _ in cur:
            count += 1
    expect(count == 100_000, f"{count} rows through a server-side cursor")
    conn.commit()


def cancel_long_query(conn):
    conn.autocommit = True
    outcome = {}

    def sleeper():
        started = time.monotonic()
        try:
            conn.execute("SELECT pg_sleep(30)")
            outcome["error"] = "pg_sleep(30) completed"
        except errors.QueryCanceled as e:
            outcome["sqlstate"] = e.diag.sqlstate
        except Exception as e:  # noqa: BLE001
            outcome["error"] = repr(e)
        outcome["seconds"] = time.monotonic() - started

    t = threading.Thread(target=sleeper)
    t.start()
    time.sleep(0.5)
    conn.cancel_safe(timeout=10)
    t.join(15)
    expect(not t.is_alive(), "the cancelled query did not return within 15 s")
    expect("error" not in outcome, outcome.get("error"))
    expect(outcome.get("sqlstate") == "57014", f"SQLSTATE {outcome.get('sqlstate')}")
    expect(outcome["seconds"] < 5, f"cancelled after {outcome['seconds']:.1f} s")
    expect(conn.execute("SELECT 1").fetchone()[0] == 1, "connection usable after cancel")


def refusals():
    n = S.free_connections
    pool = ConnectionPool(conninfo(S.free_org), min_size=n, max_size=n, kwargs={"autocommit": True}, open=False)
    try:
        pool.open(wait=True, timeout=30)
    except Exception as e:  # noqa: BLE001
        R.not_ok(f"pool of {n} connections to the FREE organization", e)
        return
    try:
        R.run(f"connection {n + 1} refused with 53300 and a hint", connection_limit, pool)
        R.run("queries past the QPS limit refused with 53400 and a hint", rate_limit, pool)
        R.run("pool works after the refusals", pool_after_refusals, pool)
    finally:
        pool.close()


def connection_limit(pool):
    # The pool holds the org's every connection.
    held = [pool.getconn(timeout=10) for _ in range(S.free_connections)]
    try:
        try:
            connect(S.free_org).close()
            raise AssertionError("the connection past the limit was admitted")
        except psycopg.OperationalError as e:
            # libpq reports a refused connection as text only: no PGresult,
            # so e.sqlstate and e.diag are empty. The text carries our
            # ErrorResponse's severity, message and HINT.
            expect(e.sqlstate in (None, "53300"), f"SQLSTATE {e.sqlstate!r}")
            message, _, hint = str(e).partition("\nHINT:")
            expect_contains(message, "FATAL:  connection limit reached", "message")
            expect_contains(message, S.free_org, "message names the organization")
            expect_contains(message, "tier FREE", "message names the tier")
            expect_contains(hint, "upgrade to tier", "hint")
    finally:
        for c in held:
            pool.putconn(c)


def rate_limit(pool):
    stop = threading.Event()
    seen = []

    def hammer():
        with pool.connection(timeout=10) as c:
            deadline = time.monotonic() + 15
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    c.execute("SELECT 1")
                except errors.ConfigurationLimitExceeded as e:
                    seen.append(e)
                    stop.set()

    threads = [threading.Thread(target=hammer) for _ in range(S.free_connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    expect(seen, "no query was refused in 15 s")
    d = seen[0].diag
    expect_rate_refusal(d.sqlstate, d.message_primary, d.message_detail, d.message_hint, S.free_org)


def pool_after_refusals(pool):
    time.sleep(1.5)
    for _ in range(S.free_connections):
        with pool.connection(timeout=10) as c:
            expect(c.execute("SELECT 1").fetchone()[0] == 1, "SELECT 1")
            timeout = c.execute("SHOW statement_timeout").fetchone()[0]
            expect(timeout == S.free_statement_timeout, f"FREE statement_timeout {timeout!r}")


def main():
    try:
        conn = connect(S.org)
    except Exception as e:  # noqa: BLE001
        R.not_ok(f"connect as {S.user(S.org)}", e)
        R.exit()
    with conn:
        R.run("tier settings visible (SHOW statement_timeout)", tier_settings, conn)
        R.run("transaction with an error, then rollback", transaction_error_then_rollback, conn)
        R.run("prepared statement reused 200 times", prepared_statement_reused, conn)
        R.run("pipeline mode", pipeline_mode, conn)
        R.run("COPY FROM STDIN and TO STDOUT (text and binary)", copy_both_ways, conn)
        R.run("large result (100,000 rows)", large_result, conn)
        R.run("cancel of a long query", cancel_long_query, conn)
    refusals()
    R.exit()


if __name__ == "__main__":
    main()
