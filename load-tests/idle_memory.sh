#!/usr/bin/env bash
# Memory per idle client connection of the Dynabase proxy (and, for
# reference, of PgBouncer in session mode).
#
#   load-tests/idle_memory.sh
#
# Environment:
#   N              idle connections to hold             (default 1000)
#   STEPS          RSS samples while opening them        (default 4)
#   WITH_PGBOUNCER 1 = also measure PgBouncer            (default 1)
#   ORG_CONNS      connections per org; the ENTERPRISE tier admits 500, so
#                  N/ORG_CONNS orgs (bench1, bench2, ...) share the load
#                  (default 500)
#   WRITE_RESULTS  1 = replace the section in RESULTS.md (default 1)
#   SECTION        name of that section (default idle_memory)
#   DYNABASE__PROXY__EVENT_LOOP  passed to the proxy; false measures the
#                  async relay (TLS and rate-limited organizations); noted
#                  in the report when set
#
# The shared PostgreSQL (max_connections=300) cannot take N backends and must
# not be restarted, so this script runs a throwaway PostgreSQL 15 of its own:
# initdb into a temporary directory (as the postgres OS user), trust
# authentication, max_connections = N + 100, shared_buffers = 16MB, fsync off,
# on a free port. The org's upstream points there.
#
# The proxy's RSS (VmRSS) is sampled once settled before the connections open
# (after one warm-up connection, so one-time work like starting the tenant
# actor is not counted), at STEPS points while opening, and after closing.
# Per-connection KiB = (RSS with N open − RSS before) / N.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-1000}"
STEPS="${STEPS:-4}"
WITH_PGBOUNCER="${WITH_PGBOUNCER:-1}"
WRITE_RESULTS="${WRITE_RESULTS:-1}"
SECTION="${SECTION:-idle_memory}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
ROLE=trust_user
ORG_CONNS="${ORG_CONNS:-500}"
NORGS=$(((N + ORG_CONNS - 1) / ORG_CONNS))
DB=postgres
export PGSSLMODE=disable
unset PGPASSWORD PGUSER PGDATABASE PGHOST PGPORT

require_tools "$PG_BIN/initdb" "$PG_BIN/pg_ctl" psql python3 curl
[[ "$WITH_PGBOUNCER" != 1 ]] || require_tools /usr/sbin/pgbouncer

make_workdir idle-memory
PG_STARTED=""
as_pg() { if [[ "$(id -u)" -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
stop_own_pg() {
    if [[ -n "$PG_STARTED" ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
}
trap 'finish_run $? stop_own_pg' EXIT
trap 'exit 130' INT TERM

# Room for the held sockets (proxy: two per connection) and PG's backends.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) > 2 * N + 200 )) || die "open file limit $(ulimit -n) too low for N=$N"

# --- throwaway PostgreSQL ------------------------------------------------------------
PG_PORT="$(free_port)"
mkdir -p "$WORK/pg"
[[ "$(id -u)" -ne 0 ]] || chown postgres "$WORK/pg"
as_pg "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust --no-sync -E UTF8 >"$WORK/pg/initdb.log" 2>&1 \
    || { cat "$WORK/pg/initdb.log" >&2; die "initdb failed"; }
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/postgres.log" -w -t 60 \
    -o "-c port=$PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK/pg \
        -c max_connections=$((N + 100)) -c shared_buffers=16MB -c fsync=off \
        -c synchronous_commit=off -c full_page_writes=off -c autovacuum=off" \
    start >/dev/null || { cat "$WORK/pg/postgres.log" >&2; die "throwaway PostgreSQL did not start"; }
PG_STARTED=1
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "CREATE ROLE $ROLE LOGIN" postgres
log "throwaway PostgreSQL on 127.0.0.1:$PG_PORT (max_connections $((N + 100)))"

# hold TARGET PORT USER PID -> JSON on stdout
hold() {
    python3 "$LT_DIR/hold_connections.py" --port "$2" --user "$3" --database "$DB" \
        -n "$N" --pid "$4" --steps "$STEPS" >"$WORK/$1.json" \
        || die "holding $N connections through $1 failed"
    cat "$WORK/$1.json"
}

# --- proxy -------------------------------------------------------------------------------
start_proxy "$WORK/dynabase"
PROXY_USERS=""
for ((i = 1; i <= NORGS; i++)); do
    create_org "bench$i" enterprise "127.0.0.1:$PG_PORT"
    # Warm-up: one connection per org (starts its tenant actor; first-use
    # allocations), so "before" holds everything but the sessions.
    psql -X -At -h 127.0.0.1 -p "$PROXY_PORT" -U "$ROLE.bench$i" -c 'SELECT 1' "$DB" >/dev/null \
        || die "cannot connect through the proxy"
    PROXY_USERS="${PROXY_USERS:+$PROXY_USERS,}$ROLE.bench$i"
done
log "proxy: opening $N idle connections over $NORGS org(s)"
hold proxy "$PROXY_PORT" "$PROXY_USERS" "$PROXY_PID" >/dev/null
stop_pid "$PROXY_PID" 25
PROXY_PID=""

# --- PgBouncer (reference) ---------------------------------------------------------------
if [[ "$WITH_PGBOUNCER" == 1 ]]; then
    start_pgbouncer "$WORK/pgbouncer" 127.0.0.1 "$PG_PORT" "$ROLE" "$DB" $((N + 100)) $((N + 10))
    log "pgbouncer: opening $N idle connections"
    hold pgbouncer "$PGB_PORT" "$ROLE" "$PGB_PID" >/dev/null
    stop_pid "$PGB_PID" 5
    PGB_PID=""
fi

# --- report -------------------------------------------------------------------------------
MACHINE="$(machine_note "at end")"
STARTED="$(date -u '+%Y-%m-%d %H:%M UTC')"
COMMAND="N=$N load-tests/idle_memory.sh"
[[ "$SECTION" == idle_memory ]] || COMMAND="SECTION=$SECTION $COMMAND"
[[ -z "${DYNABASE__PROXY__EVENT_LOOP:-}" ]] || COMMAND="DYNABASE__PROXY__EVENT_LOOP=$DYNABASE__PROXY__EVENT_LOOP $COMMAND"
RELAY="the event loop (default)"
[[ "${DYNABASE__PROXY__EVENT_LOOP:-true}" == true ]] || RELAY="the async relay (proxy.event_loop = false)"
REPORT="$WORK/report.md"
python3 - "$WORK" "$N" >"$WORK/tables.md" <<'PY'
import json, os, sys
work, n = sys.argv[1], int(sys.argv[2])
rows = []
for target in ("proxy", "pgbouncer"):
    path = os.path.join(work, f"{target}.json")
    if not os.path.exists(path):
        continue
    d = json.load(open(path))
    s = d["samples"]
    before, after = s[0]["rss_kib"], s[-1]["rss_kib"]
    per = (after - before) / n
    # Marginal cost over the second half (hash tables etc. already grown).
    half = min(s, key=lambda x: abs(x["connections"] - n / 2))
    marginal = (after - half["rss_kib"]) / (n - half["connections"]) if n > half["connections"] else float("nan")
    curve = ", ".join(f"{x['connections']}: {x['rss_kib']:,}" for x in s)
    rows.append((target, before, after, per, marginal, d["rss_after_close_kib"], curve))
print("| process | RSS before (KiB) | RSS with %d idle (KiB) | KiB per connection | marginal KiB/conn (2nd half) | RSS after closing (KiB) |" % n)
print("|---|---:|---:|---:|---:|---:|")
for t, b, a, per, m, c, _ in rows:
    print(f"| {t} | {b:,} | {a:,} | **{per:.1f}** | {m:.1f} | {c:,} |")
print()
print("RSS (KiB) by open connections:")
print()
for t, *_, curve in rows:
    print(f"- {t}: {curve}")
print()
proxy = [r for r in rows if r[0] == "proxy"][0]
print(f"Target ≤ 16 KiB per idle connection: **{'met' if proxy[3] <= 16 else 'NOT met'}** ({proxy[3]:.1f} KiB).")
PY
{
    if [[ "$SECTION" == idle_memory ]]; then echo "## Idle connection memory"; else echo "## Idle connection memory: $SECTION"; fi
    echo
    echo "Run $STARTED with \`$COMMAND\`."
    echo
    echo "$N idle client connections (raw sockets from \`hold_connections.py\`: StartupMessage, read to"
    echo "ReadyForQuery, then nothing) as \`$ROLE.bench<i>\` through the proxy (release build, default"
    echo "configuration; sessions relayed by $RELAY) spread over $NORGS enterprise org(s) (at most $ORG_CONNS connections each; the tier admits 500),"
    echo "to a throwaway PostgreSQL 15 (trust, max_connections $((N + 100)),"
    echo "shared_buffers 16MB). VmRSS from /proc/PID/status, sampled once settled; \"before\" is after one"
    echo "warm-up connection. KiB per connection = (RSS with $N open − RSS before) / $N."
    [[ "$WITH_PGBOUNCER" == 1 ]] && echo "PgBouncer $(pgbouncer_version) in session mode (pool size $((N + 10))) against the same PostgreSQL, for reference."
    echo "Kernel socket buffers are not part of RSS (neither process pays them in RSS)."
    echo "Build: $(build_note)."
    echo
    echo "Machine: $MACHINE."
    echo
    cat "$WORK/tables.md"
} >"$REPORT"

cat "$REPORT"
if [[ "$WRITE_RESULTS" == 1 ]]; then
    replace_section "$SECTION" "$REPORT"
    log "section $SECTION written to $RESULTS_FILE"
fi
