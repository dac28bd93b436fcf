// node-postgres (pg) through the Dynabase proxy: the tier's settings, simple
// (multi-statement) and extended (parameterized, named prepared) queries, a
// failed transaction rolled back, pipelined queries, a large result, cancel,
// and the proxy's refusals (53300, 53400) seen through a pg.Pool.
'use strict'

const pg = require('pg')

function env(name) {
  const value = process.env[name]
  if (!value) {
    console.log(`not ok - environment: ${name} is not set (run tests/clients/run.sh)`)
    process.exit(1)
  }
  return value
}

const S = {
  host: env('DYNABASE_CLIENT_HOST'),
  port: Number(env('DYNABASE_CLIENT_PORT')),
  role: env('DYNABASE_CLIENT_ROLE'),
  password: env('DYNABASE_CLIENT_PASSWORD'),
  database: env('DYNABASE_CLIENT_DATABASE'),
  org: env('DYNABASE_CLIENT_ORG'),
  statementTimeout: env('DYNABASE_CLIENT_ORG_STATEMENT_TIMEOUT'),
  freeOrg: env('DYNABASE_CLIENT_FREE_ORG'),
  freeConnections: Number(env('DYNABASE_CLIENT_FREE_CONNECTIONS')),
  freeStatementTimeout: env('DYNABASE_CLIENT_FREE_STATEMENT_TIMEOUT'),
}

const config = (org, extra = {}) => ({
  host: S.host,
  port: S.port,
  user: `${S.role}.${org}`,
  password: S.password,
  database: S.database,
  ssl: false,
  connectionTimeoutMillis: 10000,
  application_name: 'node-pg-check',
  ...extra,
})

let failed = 0
async function check(name, fn, ...args) {
  try {
    await fn(...args)
    console.log(`ok - ${name}`)
  } catch (e) {
    failed++
    const reason = String((e && e.message) || e).replace(/\s+/g, ' ')
    console.log(`not ok - ${name}: ${reason}`)
    if (process.env.DYNABASE_CLIENT_VERBOSE) console.error(e)
  }
}

function expect(condition, what) {
  if (!condition) throw new Error(what)
}

function expectContains(text, part, what) {
  if (typeof text !== 'string' || !text.toLowerCase().includes(part.toLowerCase())) {
    throw new Error(`${what}: ${JSON.stringify(part)} not in ${JSON.stringify(text)}`)
  }
}

// The proxy's FATAL 53300 (src/proxy/client_error.rs).
function expectConnectionRefusal(e, org) {
  expect(e.code === '53300', `SQLSTATE ${e.code}, expected 53300 (${e.message})`)
  expectContains(e.message, 'connection limit reached', 'message')
  expectContains(e.message, org, 'message names the organization')
  expectContains(e.message, 'tier FREE', 'message names the tier')
  expectContains(e.hint, 'upgrade to tier', 'hint')
}

// The proxy's ERROR 53400 (docs/rate-limits.md).
function expectRateRefusal(e, org) {
  expect(e.code === '53400', `SQLSTATE ${e.code}, expected 53400 (${e.message})`)
  expectContains(e.message, 'rate limit', 'message')
  expectContains(e.message, org, 'message names the organization')
  expectContains(e.message, 'tier FREE', 'message names the tier')
  expectContains(e.detail, 'retry after', 'detail')
  expectContains(e.hint, 'upgrade to tier', 'hint')
}

async function expectError(promise, code, what) {
  try {
    await promise
  } catch (e) {
    expect(e.code === code, `${what}: SQLSTATE ${e.code}, expected ${code} (${e.message})`)
    return e
  }
  throw new Error(`${what}: no error`)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function tierSettings(pool) {
  const { rows } = await pool.query('SHOW statement_timeout')
  expect(rows[0].statement_timeout === S.statementTimeout, `statement_timeout ${rows[0].statement_timeout}`)
  const app = (await pool.query('SHOW application_name')).rows[0].application_name
  expect(app.includes(S.org) && app.endsWith('node-pg-check'), `application_name ${app}`)
}

async function simpleAndExtended(pool) {
  // Simple protocol: several statements in one Query, one result each.
  const results = await pool.query("SELECT 1 AS a; SELECT 'two' AS b; SELECT 3 AS c")
  expect(Array.isArray(results) && results.length === 3, 'three results')
  expect(results[1].rows[0].b === 'two', `second result ${JSON.stringify(results[1].rows)}`)
  // Extended protocol: parameters.
  const { rows } = await pool.query('SELECT $1::int + 1 AS n, $2::text AS t, $3::jsonb AS j', [41, 'é', { k: [1] }])
  expect(rows[0].n === 42 && rows[0].t === 'é' && rows[0].j.k[0] === 1, `row ${JSON.stringify(rows[0])}`)
}

async function transactionErrorThenRollback(pool) {
  const c = await pool.connect()
  try {
    await c.query('CREATE TEMP TABLE tx_check (id int PRIMARY KEY)')
    await c.query('INSERT INTO tx_check VALUES (1)')
    await c.query('BEGIN')
    await c.query('INSERT INTO tx_check VALUES (2)')
    await expectError(c.query('INSERT INTO tx_check VALUES ($1)', [1]), '23505', 'duplicate key')
    await expectError(c.query('SELECT 1'), '25P02', 'query in a failed transaction')
    await c.query('ROLLBACK')
    const { rows } = await c.query('SELECT array_agg(id ORDER BY id) AS ids FROM tx_check')
    expect(JSON.stringify(rows[0].ids) === '[1]', `rows after rollback ${JSON.stringify(rows[0].ids)}`)
  } finally {
    c.release()
  }
}

async function preparedStatementReused(pool) {
  const c = await pool.connect()
  try {
    for (let i = 0; i < 200; i++) {
      const { rows } = await c.query({ name: 'double', text: 'SELECT $1::int * 2 AS n', values: [i] })
      expect(rows[0].n === i * 2, `execution ${i}: ${rows[0].n}`)
    }
    const { rows } = await c.query("SELECT count(*)::int AS n FROM pg_prepared_statements WHERE name = 'double'")
    expect(rows[0].n === 1, `${rows[0].n} server-side statements named double`)
  } finally {
    c.release()
  }
}

async function pipelined() {
  const c = new pg.Client(config(S.org, { pipeline: true }))
  await c.connect()
  try {
    const queries = []
    for (let i = 0; i < 100; i++) queries.push(c.query('SELECT $1::int AS n', [i]))
    queries.push(c.query('SELECT 1/0'))
    queries.push(c.query('SELECT 101 AS n'))
    const results = await Promise.allSettled(queries)
    for (let i = 0; i < 100; i++) {
      expect(results[i].status === 'fulfilled' && results[i].value.rows[0].n === i, `pipelined query ${i}`)
    }
    expect(results[100].status === 'rejected' && results[100].reason.code === '22012', 'division by zero')
    expect(results[101].status === 'fulfilled' && results[101].value.rows[0].n === 101, 'query after the error')
  } finally {
    await c.end()
  }
}

async function largeResult(pool) {
  const { rows } = await pool.query("SELECT g, repeat('x', 100) AS r FROM generate_series(1, 100000) g")
  expect(rows.length === 100000, `${rows.length} rows`)
  expect(rows[99999].g === 100000 && rows[99999].r.length === 100, 'last row')
}

async function cancelLongQuery(pool) {
  const c = await pool.connect()
  try {
    const started = Date.now()
    const query = new pg.Query('SELECT pg_sleep(30)')
    const done = new Promise((resolve) => {
      query.on('error', (e) => resolve(e))
      query.on('end', () => resolve(null))
    })
    c.query(query)
    await sleep(500)
    new pg.Client(config(S.org)).cancel(c, query)
    const e = await Promise.race([done, sleep(15000).then(() => 'timeout')])
    expect(e !== 'timeout', 'the cancelled query did not return within 15 s')
    expect(e, 'pg_sleep(30) completed')
    expect(e.code === '57014', `SQLSTATE ${e.code} (${e.message})`)
    const seconds = (Date.now() - started) / 1000
    expect(seconds < 5, `cancelled after ${seconds} s`)
    expect((await c.query('SELECT 1 AS one')).rows[0].one === 1, 'connection usable after cancel')
  } finally {
    c.release()
  }
}

async function connectionLimit(pool) {
  const held = []
  try {
    for (let i = 0; i < S.freeConnections; i++) held.push(await pool.connect())
    const extra = new pg.Client(config(S.freeOrg))
    extra.on('error', () => {})
    let refused = null
    try {
      await extra.connect()
      await extra.end()
    } catch (e) {
      refused = e
    }
    expect(refused, 'the connection past the limit was admitted')
    expectConnectionRefusal(refused, S.freeOrg)
  } finally {
    held.forEach((c) => c.release())
  }
}

async function rateLimit(pool) {
  const held = []
  for (let i = 0; i < S.freeConnections; i++) held.push(await pool.connect())
  const seen = []
  let stop = false
  const deadline = Date.now() + 15000
  try {
    await Promise.all(
      held.map(async (c) => {
        while (!stop && Date.now() < deadline) {
          try {
            await c.query('SELECT 1')
          } catch (e) {
            if (e.code !== '53400') throw e
            seen.push(e)
            stop = true
          }
        }
      })
    )
  } finally {
    held.forEach((c) => c.release())
  }
  expect(seen.length > 0, 'no query was refused in 15 s')
  expectRateRefusal(seen[0], S.freeOrg)
}

async function poolAfterRefusals(pool) {
  await sleep(1500)
  const clients = []
  try {
    for (let i = 0; i < S.freeConnections; i++) clients.push(await pool.connect())
    for (const c of clients) {
      expect((await c.query('SELECT 1 AS one')).rows[0].one === 1, 'SELECT 1')
      const t = (await c.query('SHOW statement_timeout')).rows[0].statement_timeout
      expect(t === S.freeStatementTimeout, `FREE statement_timeout ${t}`)
    }
  } finally {
    clients.forEach((c) => c.release())
  }
  expect((await pool.query('SELECT 2 AS two')).rows[0].two === 2, 'pool.query')
}

async function main() {
  const pool = new pg.Pool({ ...config(S.org), max: 5 })
  pool.on('error', (e) => console.error(`idle client error: ${e.message}`))
  await check('tier settings visible (SHOW statement_timeout)', tierSettings, pool)
  await check('simple (multi-statement) and extended (parameterized) queries', simpleAndExtended, pool)
  await check('transaction with an error, then rollback', transactionErrorThenRollback, pool)
  await check('named prepared statement reused 200 times', preparedStatementReused, pool)
  await check('pipelined queries with an error among them', pipelined)
  await check('large result (100,000 rows)', largeResult, pool)
  await check('cancel of a long query', cancelLongQuery, pool)
  await pool.end()

  const free = new pg.Pool({ ...config(S.freeOrg), max: S.freeConnections })
  free.on('error', (e) => console.error(`idle client error: ${e.message}`))
  await check(`connection ${S.freeConnections + 1} refused with 53300 and a hint`, connectionLimit, free)
  await check('queries past the QPS limit refused with 53400 and a hint', rateLimit, free)
  await check('pool works after the refusals', poolAfterRefusals, free)
  await free.end()
  process.exit(failed ? 1 : 0)
}

main().catch((e) => {
  console.log(`not ok - unexpected: ${String((e && e.message) || e).replace(/\s+/g, ' ')}`)
  process.exit(1)
})
