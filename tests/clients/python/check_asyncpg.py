#!/usr/bin/env python3
"""asyncpg through the Dynabase proxy: the tier's settings, a failed
transaction rolled back, a prepared statement reused, binary-format values
of many types, binary COPY, a large result (fetch and cursor), cancel
(asyncpg's timeout sends a CancelRequest), and the proxy's refusals (53300,
53400) seen through an asyncpg pool."""

import asyncio
import datetime
import decimal
import time
import uuid

import asyncpg

from common import (
    Report,
    Settings,
    expect,
    expect_connection_refusal,
    expect_rate_refusal,
)

S = Settings()
R = Report()


def params(org):
    return dict(
        host=S.host,
        port=S.port,
        user=S.user(org),
        password=S.password,
        database=S.database,
        ssl=False,
        timeout=10,
        server_settings={"application_name": "asyncpg-check"},
    )


async def tier_settings(conn):
    timeout = await conn.fetchval("SHOW statement_timeout")
    expect(timeout == S.statement_timeout, f"statement_timeout {timeout!r}, expected {S.statement_timeout!r}")
    app = await conn.fetchval("SHOW application_name")
    expect(S.org in app and app.endswith("asyncpg-check"), f"application_name {app!r}")


async def transaction_error_then_rollback(conn):
    await conn.execute("CREATE TEMP TABLE tx_check (id int PRIMARY KEY)")
    await conn.execute("INSERT INTO tx_check VALUES (1)")
    tx = conn.transaction()
    await tx.start()
    await conn.execute("INSERT INTO tx_check VALUES (2)")
    try:
        await conn.execute("INSERT INTO tx_check VALUES (1)")
        raise AssertionError("duplicate key was accepted")
    except asyncpg.UniqueViolationError as e:
        expect(e.sqlstate == "23505", f"SQLSTATE {e.sqlstate}")
    try:
        await conn.fetchval("SELECT 1")
        raise AssertionError("a failed transaction accepted a query")
    except asyncpg.InFailedSQLTransactionError:
        pass
    await tx.rollback()
    ids = await conn.fetchval("SELECT array_agg(id ORDER BY id) FROM tx_check")
    expect(ids == [1], f"rows after rollback {ids}")
    # The context-manager form rolls back on the exception too.
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO tx_check VALUES (3)")
            await conn.execute("INSERT INTO tx_check VALUES (1)")
    except asyncpg.UniqueViolationError:
        pass
    expect(await conn.fetchval("SELECT count(*) FROM tx_check") == 1, "rows after the second rollback")


async def prepared_statement_reused(conn):
    stmt = await conn.prepare("SELECT $1::int * 2, $2::text")
    for i in range(200):
        row = await stmt.fetchrow(i, f"n{i}")
        expect(tuple(row) == (i * 2, f"n{i}"), f"execution {i}: {tuple(row)}")
    named = await conn.fetchval(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int * 2, $2::text'"
    )
    expect(named == 1, f"{named} server-side prepared statements for the query")


async def binary_values(conn):
    # asyncpg exchanges parameters and results in binary format.
    values = (
        b"\x00\x01\xffbytes",
        decimal.Decimal("12345678901234567890.123456789"),
        datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.timezone.utc),
        [1, 2, None, 4],
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "ünïcødé ✓",
        9_007_199_254_740_993,
        1.5,
        datetime.date(1999, 12, 31),
        True,
    )
    row = await conn.fetchrow(
        "SELECT $1::bytea, $2::numeric, $3::timestamptz, $4::int[], $5::uuid,"
        " $6::text, $7::int8, $8::float8, $9::date, $10::bool",
        *values,
    )
    expect(tuple(row) == values, f"round trip {tuple(row)}")


async def binary_copy(conn):
    await conn.execute("CREATE TEMP TABLE copied (id int, name text, at timestamptz)")
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    records = [(i, f"name {i}", now) for i in range(20_000)]
    status = await conn.copy_records_to_table("copied", records=records)
    expect(status == "COPY 20000", f"status {status!r}")
    total = await conn.fetchval("SELECT sum(id) FROM copied")
    expect(total == sum(range(20_000)), f"sum {total}")


async def large_result(conn):
    query = "SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g"
    rows = await conn.fetch(query)
    expect(len(rows) == 100_000, f"{len(rows)} rows")
    expect(rows[-1][0] == 100_000 and len(rows[-1][1]) == 100, "last row")
    count = 0
    async with conn.transaction():
        async for _ in conn.cursor(query, prefetch=5000):
            count += 1
    expect(count == 100_000, f"{count} rows through a cursor")


async def cancel_long_query(conn):
    started = time.monotonic()
    try:
        await conn.fetchval("SELECT pg_sleep(30)", timeout=0.5)
        raise AssertionError("pg_sleep(30) completed")
    except asyncio.TimeoutError:
        pass
    # asyncpg sent a CancelRequest on the timeout; the next query runs once
    # PostgreSQL has answered the cancelled one (57014), not after 30 s.
    value = await asyncio.wait_for(conn.fetchval("SELECT 1"), 10)
    elapsed = time.monotonic() - started
    expect(value == 1, "SELECT 1")
    expect(elapsed < 5, f"the query ran on for {elapsed:.1f} s")
    running = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
    )
    expect(running == 0, f"{running} pg_sleep(30) still running")


async def refusals():
    n = S.free_connections
    try:
        pool = await asyncpg.create_pool(min_size=n, max_size=n, **params(S.free_org))
    except Exception as e:  # noqa: BLE001
        R.not_ok(f"pool of {n} connections to the FREE organization", e)
        return
    try:
        await R.run_async(f"connection {n + 1} refused with 53300 and a hint", connection_limit, pool)
        await R.run_async("queries past the QPS limit refused with 53400 and a hint", rate_limit, pool)
        await R.run_async("pool works after the refusals", pool_after_refusals, pool)
    finally:
        await pool.close()


async def connection_limit(pool):
    held = [await pool.acquire(timeout=10) for _ in range(S.free_connections)]
    try:
        try:
            conn = await asyncpg.connect(**params(S.free_org))
            await conn.close()
            raise AssertionError("the connection past the limit was admitted")
        except asyncpg.TooManyConnectionsError as e:
            expect_connection_refusal(e.sqlstate, e.message, e.hint, S.free_org)
    finally:
        for c in held:
            await pool.release(c)


async def rate_limit(pool):
    stop = asyncio.Event()
    seen = []

    async def hammer(conn):
        deadline = time.monotonic() + 15
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                await conn.fetchval("SELECT 1")
            except asyncpg.PostgresError as e:
                if e.sqlstate != "53400":
                    raise
                seen.append(e)
                stop.set()

    held = [await pool.acquire(timeout=10) for _ in range(S.free_connections)]
    try:
        await asyncio.gather(*(hammer(c) for c in held))
        expect(seen, "no query was refused in 15 s")
        e = seen[0]
        expect_rate_refusal(e.sqlstate, e.message, e.detail, e.hint, S.free_org)
        # Let the quota refill before the pool's reset queries on release.
        await asyncio.sleep(1.5)
    finally:
        for c in held:
            await pool.release(c)


async def pool_after_refusals(pool):
    await asyncio.sleep(1.5)
    for _ in range(S.free_connections):
        async with pool.acquire(timeout=10) as c:
            expect(await c.fetchval("SELECT 1") == 1, "SELECT 1")
            timeout = await c.fetchval("SHOW statement_timeout")
            expect(timeout == S.free_statement_timeout, f"FREE statement_timeout {timeout!r}")


async def main():
    try:
        conn = await asyncpg.connect(**params(S.org))
    except Exception as e:  # noqa: BLE001
        R.not_ok(f"connect as {S.user(S.org)}", e)
        R.exit()
    try:
        await R.run_async("tier settings visible (SHOW statement_timeout)", tier_settings, conn)
        await R.run_async("transaction with an error, then rollback", transaction_error_then_rollback, conn)
        await R.run_async("prepared statement reused 200 times", prepared_statement_reused, conn)
        await R.run_async("binary protocol values round trip", binary_values, conn)
        await R.run_async("binary COPY of 20,000 records", binary_copy, conn)
        await R.run_async("large result (100,000 rows)", large_result, conn)
        await R.run_async("cancel of a long query", cancel_long_query, conn)
    finally:
        await conn.close()
    await refusals()
    R.exit()


if __name__ == "__main__":
    asyncio.run(main())
