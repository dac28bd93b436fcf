#!/usr/bin/env bash
# Fault soak: two gateway replicas under pgbench load while the backing
# services and the replicas themselves are killed and restarted, then a
# reconciliation of what the clients did against what the gateway recorded.
#
#   load-tests/soak.sh [minutes]                 (default 15; not run in CI)
#   WRITE_RESULTS=0 load-tests/soak.sh 5         (a short run, RESULTS.md untouched)
#
# Everything runs on its own ports and in its own directories, never on the
# shared services (5432/6379/27017/12111):
#
#   DYNABASE_SERVICES_DIR  state of the soak's services (default /tmp/dynabase-soak;
#                          wiped at start)
#   PGPORT_DYNABASE        tenant PostgreSQL 15, own initdb cluster (default 55432)
#   REDIS_PORT_DYNABASE    Redis, no persistence (default 56379)
#   MONGO_PORT_DYNABASE    FerretDB on SQLite, as scripts/services.sh runs it (default 57017)
#   SOAK_PROXY_PORTS       proxy ports of replicas a and b (default "56432 56433")
#   SOAK_HTTP_PORTS        HTTP ports of replicas a and b (default "58080 58081")
#   DYNABASE_TEST_FERRETDB_BIN  the FerretDB binary (default: the one scripts/services.sh
#                          recorded in .services/env of this checkout or of ../main)
#
# What runs: replicas a and b of the release binary (cargo build --release --bin
# dynabase), both on the same Redis and FerretDB, created orgs on every tier,
# pgbench loops through both replicas (custom script: one `SELECT 1` per
# transaction, simple protocol, so a transaction is one query cycle), a
# webhook sender (load-tests/soak_webhooks.py: signed Stripe events moving
# two orgs up, operator resets in between, every event delivered twice) and a
# sampler of pg_stat_activity per org (application_name = <org>/<tier>/…).
#
# Faults, in this order, repeated until the time is up (each at least once):
#   1. Redis            kill -9, restarted after 8 s
#   2. FerretDB         kill -9, restarted after 10 s
#   3. tenant PostgreSQL  pg_ctl stop -m immediate, started after 5 s
#   4. replica a        kill -9 (once its usage backlog is written), restarted
#   5. replica b        SIGTERM (drains up to shutdown.deadline), restarted
# with a recovery gap after each (SOAK_GAP seconds, default 40).
#
# At the end load-tests/soak_reconcile.py checks: usage query cycles per org
# against the cycles pgbench completed (loss only within the kill -9 window of
# docs/usage.md), every webhook applied exactly once, connection limits never
# exceeded in the samples, no stuck sessions or leases, both replicas ready.
# It prints a Markdown report (PASS/FAIL per check), which replaces the
# `soak` section of load-tests/RESULTS.md (unless WRITE_RESULTS=0); the
# script exits non-zero when any check fails. Logs stay in $SOAK_WORK
# (default $DYNABASE_SERVICES_DIR/work).
set -euo pipefail

MINUTES="${1:-15}"
[[ "$MINUTES" =~ ^[0-9]+$ && "$MINUTES" -ge 1 ]] || { echo "usage: $0 [minutes]" >&2; exit 2; }

LT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=load-tests/lib.sh
source "$LT_DIR/lib.sh"

SD="${DYNABASE_SERVICES_DIR:-/tmp/dynabase-soak}"
PG_PORT="${PGPORT_DYNABASE:-55432}"
REDIS_PORT="${REDIS_PORT_DYNABASE:-56379}"
MONGO_PORT="${MONGO_PORT_DYNABASE:-57017}"
read -r PROXY_A PROXY_B <<<"${SOAK_PROXY_PORTS:-56432 56433}"
read -r HTTP_A HTTP_B <<<"${SOAK_HTTP_PORTS:-58080 58081}"
GAP="${SOAK_GAP:-40}"
FLUSH_INTERVAL_S=5 # usage.flush_interval (default), the kill -9 window's unit
WORK="${SOAK_WORK:-$SD/work}"
PG_BIN=/usr/lib/postgresql/15/bin
ADMIN_TOKEN="soak-admin-token-$RANDOM$RANDOM"
WEBHOOK_SECRET="whsec_soak_$RANDOM$RANDOM$RANDOM"
ROLE=soak
DB=soak

require_tools pgbench psql redis-server redis-cli curl python3 runuser "$PG_BIN/pg_ctl"
[[ -x "$DYNABASE_BIN" ]] || die "no release binary at $DYNABASE_BIN (cargo build --release --bin dynabase)"
if [[ -z "${DYNABASE_TEST_FERRETDB_BIN:-}" ]]; then
    for env_file in "$REPO_ROOT/.services/env" "$REPO_ROOT/../main/.services/env"; do
        if [[ -f "$env_file" ]]; then
            DYNABASE_TEST_FERRETDB_BIN="$(sed -n 's/^export DYNABASE_TEST_FERRETDB_BIN=//p' "$env_file")"
            [[ -n "$DYNABASE_TEST_FERRETDB_BIN" ]] && break
        fi
    done
fi
FERRETDB_BIN="${DYNABASE_TEST_FERRETDB_BIN:-}"
[[ -x "$FERRETDB_BIN" ]] || die "no FerretDB binary (set DYNABASE_TEST_FERRETDB_BIN; scripts/services.sh builds one)"
for port in "$PG_PORT" "$REDIS_PORT" "$MONGO_PORT" "$PROXY_A" "$PROXY_B" "$HTTP_A" "$HTTP_B"; do
    case "$port" in 5432 | 6379 | 27017 | 12111) die "port $port belongs to the shared services" ;; esac
    ! port_open 127.0.0.1 "$port" || die "port $port is in use; choose other ports (see the header)"
done

export PGSSLMODE=disable PGCONNECT_TIMEOUT=5
unset PGPASSWORD PGUSER PGDATABASE PGHOST PGPORT

rm -rf "$SD"
mkdir -p "$SD" "$WORK"/{loops,replica-a,replica-b}
chmod 755 "$SD"
# Restarts run the binary the soak started with, whatever is rebuilt meanwhile.
RUN_BIN="$SD/dynabase"
cp "$DYNABASE_BIN" "$RUN_BIN"
RUN_BUILD_NOTE="$(build_note)"
STOP="$WORK/stop"
EVENTS="$WORK/events.tsv" # epoch_ms <tab> event <tab> detail
: >"$EVENTS"
event() { printf '%s\t%s\t%s\n' "$(date +%s%3N)" "$1" "${2:-}" >>"$EVENTS"; log "$1 ${2:-}"; }

# ---------------------------------------------------------------------------
# Processes this script started: only these are ever signalled.
# ---------------------------------------------------------------------------
REDIS_PID="" FERRET_PID="" PID_a="" PID_b="" WEBHOOK_PID="" SAMPLER_PID=""
LOOP_PIDS=()
PG_DATA="$SD/pg"
PG_SOCK="$SD/pg-run"

pg_postmaster_pid() { head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null | tr -dc '0-9'; }

as_postgres() { (cd / && runuser -u postgres -- "$@"); }

cleanup() {
    local rc=$?
    touch "$STOP" 2>/dev/null || true
    local pid
    for pid in "${LOOP_PIDS[@]}" "$WEBHOOK_PID" "$SAMPLER_PID"; do
        [[ -n "$pid" ]] || continue
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
    done
    stop_pid "$PID_a" 25
    stop_pid "$PID_b" 25
    stop_pid "$REDIS_PID" 5
    stop_pid "$FERRET_PID" 5
    if [[ -n "$(pg_postmaster_pid)" ]]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    wait 2>/dev/null || true
    if [[ $rc -ne 0 ]]; then log "exit $rc; logs kept in $WORK"; fi
    return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------
pg_init() {
    mkdir -p "$PG_DATA" "$PG_SOCK"
    chown postgres: "$PG_DATA" "$PG_SOCK"
    chmod 700 "$PG_DATA"
    as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C --auth=trust >"$SD/initdb.log" 2>&1 \
        || { cat "$SD/initdb.log" >&2; die "initdb failed"; }
    cat >>"$PG_DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 300
shared_buffers = 32MB
fsync = off
synchronous_commit = off
logging_collector = off
log_min_messages = warning
EOF
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$PG_DATA/pg_hba.conf"
    chown postgres: "$PG_DATA/pg_hba.conf"
}

pg_start() {
    touch "$SD/pg.log" && chown postgres: "$SD/pg.log"
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$SD/pg.log" -w -t 60 start >/dev/null \
        || { tail -20 "$SD/pg.log" >&2; die "PostgreSQL did not start"; }
}

pg_stop_immediate() {
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null
}

psql_su() { psql -X -q -At -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

redis_start() {
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --dir "$SD" --logfile "$SD/redis.log" --protected-mode yes </dev/null >/dev/null 2>&1 &
    REDIS_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        [[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] && return 0
        sleep 0.1
    done
    die "Redis did not answer on $REDIS_PORT"
}

ferret_start() {
    mkdir -p "$SD/ferretdb-data" "$SD/ferretdb-state"
    FERRETDB_TELEMETRY=disable DO_NOT_TRACK=1 "$FERRETDB_BIN" \
        --listen-addr="127.0.0.1:$MONGO_PORT" --handler=sqlite \
        --sqlite-url="file:$SD/ferretdb-data/" --state-dir="$SD/ferretdb-state" \
        --debug-addr=- --telemetry=disable --log-level=warn \
        </dev/null >>"$SD/ferretdb.log" 2>&1 &
    FERRET_PID=$!
    wait_port 127.0.0.1 "$MONGO_PORT" 30 FerretDB
}

# ---------------------------------------------------------------------------
# Gateway replicas
# ---------------------------------------------------------------------------
replica_start() { # a|b
    local name="$1" proxy http
    if [[ "$name" == a ]]; then proxy=$PROXY_A http=$HTTP_A; else proxy=$PROXY_B http=$HTTP_B; fi
    mkdir -p "$WORK/replica-$name/data"
    (
        cd "$REPO_ROOT"
        DYNABASE_CONFIG_DIR="${DYNABASE_CONFIG_DIR:-$REPO_ROOT/config}" \
            DYNABASE_ADMIN_TOKEN="$ADMIN_TOKEN" \
            STRIPE_WEBHOOK_SECRET="$WEBHOOK_SECRET" \
            DYNABASE__STRIPE__PRICES__PRICE_SOAK_STARTER=starter \
            DYNABASE__STRIPE__PRICES__PRICE_SOAK_PRO=pro \
            MONGODB_URL="mongodb://127.0.0.1:$MONGO_PORT" \
            REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
            DYNABASE__REPLICA__ID="soak-$name" \
            PORT="$http" \
            DYNABASE__HTTP__HOST=127.0.0.1 \
            DYNABASE__PROXY__HOST=127.0.0.1 \
            DYNABASE__PROXY__PORT="$proxy" \
            DYNABASE__STORE__DATA_DIR="$WORK/replica-$name/data" \
            DYNABASE__LOG__FILTER=info \
            exec "$RUN_BIN" serve
    ) >>"$WORK/replica-$name/dynabase.log" 2>&1 &
    printf -v "PID_$name" '%s' "$!"
    wait_port 127.0.0.1 "$proxy" 60 "replica $name proxy"
    wait_port 127.0.0.1 "$http" 30 "replica $name HTTP"
}

http_port() { if [[ "$1" == a ]]; then echo "$HTTP_A"; else echo "$HTTP_B"; fi; }

admin() { # replica method path [json]
    curl -s -m 10 -X "$2" "http://127.0.0.1:$(http_port "$1")$3" \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' ${4:+-d "$4"}
}

wait_ready() { # replica seconds -> 0 when /ready answered 200
    local i
    for ((i = 0; i < $2 * 2; i++)); do
        [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$(http_port "$1")/ready")" == 200 ]] && return 0
        sleep 0.5
    done
    return 1
}

metric() { # replica name -> value (empty when unknown)
    # awk reads everything (an early exit would fail curl's write, and the pipeline)
    { curl -s -m 3 "http://127.0.0.1:$(http_port "$1")/metrics" || true; } | awk -v m="$2" '$1 == m && v == "" {v = $2} END {print v}'
}

# ---------------------------------------------------------------------------
# Load: pgbench loops (restarted after every run; pgbench does not reconnect)
# ---------------------------------------------------------------------------
echo 'SELECT 1;' >"$WORK/select1.sql"

# client_loop ID ORG REPLICA RATE TXNS CLIENTS...: one pgbench run after the
# other until $STOP exists, cycling through the client counts given. Each
# run logs every transaction (-l): pgbench 15 exits without its summary on
# some errors ("unexpected error status"), the log still has what completed.
client_loop() {
    local id="$1" org="$2" replica="$3" rate="$4" txns="$5"
    shift 5
    local -a counts=("$@")
    local port n=0 c dir="$WORK/loops/$id"
    if [[ "$replica" == a ]]; then port=$PROXY_A; else port=$PROXY_B; fi
    mkdir -p "$dir"
    printf '%s\t%s\t%s\n' "$org" "$replica" "$rate" >"$dir/meta"
    while [[ ! -f "$STOP" ]]; do
        c="${counts[n % ${#counts[@]}]}"
        printf '%s\t%s\t%s\n' "$n" "$(date +%s%3N)" "$c" >>"$dir/starts"
        set +e
        pgbench -n -M simple -f "$WORK/select1.sql" -c "$c" -j 1 -t "$txns" -R "$rate" \
            -l --log-prefix="$dir/txn-$n" \
            -h 127.0.0.1 -p "$port" -U "$ROLE.$org" "$DB" >"$dir/run-$n.out" 2>"$dir/run-$n.err"
        echo $? >"$dir/run-$n.rc"
        set -e
        n=$((n + 1))
        sleep 0.5
    done
}

# org tier rate/loop txns/client per-replica-loops clients...
LOAD=(
    "free1 free 2 15 2 2 1"
    "starter1 starter 10 60 2 4 3"
    "pro1 pro 70 70 1 26 20"
    "ent1 enterprise 150 1800 1 2"
    "hook1 free 3 40 1 2"
    "hook2 free 3 40 1 2"
)

start_load() {
    local spec org tier rate txns loops i replica
    for spec in "${LOAD[@]}"; do
        read -r org tier rate txns loops counts <<<"$spec"
        for replica in a b; do
            for ((i = 1; i <= loops; i++)); do
                # shellcheck disable=SC2086
                client_loop "$org-$replica$i" "$org" "$replica" "$rate" "$txns" $counts &
                LOOP_PIDS+=("$!")
            done
        done
    done
}

# Every second: sessions per org in the tenant PostgreSQL (the proxy sets
# application_name = <org>/<tier>/<client's>), superuser over the socket.
sampler() {
    while [[ ! -f "$STOP" ]]; do
        psql -X -At -F $'\t' -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d postgres -c \
            "SELECT (extract(epoch FROM now()) * 1000)::bigint, split_part(application_name, '/', 1), count(*)
               FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name LIKE '%/%/%'
              GROUP BY 2" >>"$WORK/samples.tsv" 2>/dev/null || echo "$(date +%s%3N)	-	down" >>"$WORK/samples.tsv"
        sleep 1
    done
}

# ---------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------
FAULT_COUNTS=""
count_fault() { FAULT_COUNTS+="$1 "; }

fault_redis() {
    event fault_redis_kill9 "pid $REDIS_PID"
    kill -KILL "$REDIS_PID"
    wait "$REDIS_PID" 2>/dev/null || true
    sleep 8
    redis_start
    event redis_restarted "pid $REDIS_PID"
    count_fault redis
}

fault_ferretdb() {
    event fault_ferretdb_kill9 "pid $FERRET_PID"
    kill -KILL "$FERRET_PID"
    wait "$FERRET_PID" 2>/dev/null || true
    sleep 10
    ferret_start
    event ferretdb_restarted "pid $FERRET_PID"
    count_fault ferretdb
}

fault_postgres() {
    event fault_postgres_stop_immediate "postmaster $(pg_postmaster_pid)"
    pg_stop_immediate
    sleep 5
    pg_start
    event postgres_started "postmaster $(pg_postmaster_pid)"
    count_fault postgres
}

fault_replica_a_kill9() {
    # docs/usage.md bounds what kill -9 loses when the replica's usage is being
    # written normally; a backlog left by an earlier store outage is not in it.
    local i pending=""
    for ((i = 0; i < 120; i++)); do
        pending="$(metric a dynabase_usage_pending_records)"
        [[ "$pending" == 0 ]] && break
        sleep 1
    done
    event fault_replica_a_kill9 "pid $PID_a; pending usage records before: ${pending:-?} (waited ${i}s)"
    kill -KILL "$PID_a"
    wait "$PID_a" 2>/dev/null || true
    sleep 3
    replica_start a
    wait_ready a 60 || log "replica a not ready 60 s after its restart"
    event replica_a_restarted "pid $PID_a"
    count_fault replica_a_kill9
}

fault_replica_b_sigterm() {
    local t0 rc=0
    t0="$(date +%s)"
    event fault_replica_b_sigterm "pid $PID_b"
    kill -TERM "$PID_b"
    wait "$PID_b" || rc=$?
    event replica_b_exited "exit $rc after $(($(date +%s) - t0)) s"
    replica_start b
    wait_ready b 60 || log "replica b not ready 60 s after its restart"
    event replica_b_restarted "pid $PID_b"
    count_fault replica_b_sigterm
}

# ---------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------
log "services in $SD: PostgreSQL :$PG_PORT, Redis :$REDIS_PORT, FerretDB :$MONGO_PORT"
pg_init
pg_start
psql_su -d postgres -c "CREATE ROLE $ROLE LOGIN" -c "CREATE DATABASE $DB OWNER $ROLE"
redis_start
ferret_start
replica_start a
replica_start b
wait_ready a 60 || die "replica a not ready"
wait_ready b 60 || die "replica b not ready"
log "replicas: a pid $PID_a (proxy :$PROXY_A, HTTP :$HTTP_A), b pid $PID_b (proxy :$PROXY_B, HTTP :$HTTP_B)"

: >"$WORK/orgs.tsv"
for spec in "${LOAD[@]}"; do
    read -r org tier _ <<<"$spec"
    code="$(curl -s -o "$WORK/org-$org.json" -w '%{http_code}' -X POST "http://127.0.0.1:$HTTP_A/admin/orgs" \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d "{\"id\":\"$org\",\"name\":\"$org\",\"tier\":\"$tier\",\"upstream\":\"127.0.0.1:$PG_PORT\"}")"
    [[ "$code" == 201 ]] || { cat "$WORK/org-$org.json" >&2; die "creating org $org: HTTP $code"; }
    printf '%s\t%s\n' "$org" "$tier" >>"$WORK/orgs.tsv"
done
psql -X -At -h 127.0.0.1 -p "$PROXY_A" -U "$ROLE.ent1" -c 'SELECT 1' "$DB" >/dev/null \
    || die "cannot query through replica a"
echo 1 >"$WORK/probe-cycles-ent1" # that query is a cycle too

START_MS="$(date +%s%3N)"
END_S=$(($(date +%s) + MINUTES * 60))
event soak_start "minutes $MINUTES"
sampler &
SAMPLER_PID=$!
start_load
python3 "$LT_DIR/soak_webhooks.py" --work "$WORK" --secret "$WEBHOOK_SECRET" --token "$ADMIN_TOKEN" \
    --http "$HTTP_A" "$HTTP_B" --orgs hook1 hook2 >"$WORK/webhooks.log" 2>&1 &
WEBHOOK_PID=$!

sleep 30
cycle=0
while :; do
    cycle=$((cycle + 1))
    for fault in fault_redis fault_ferretdb fault_postgres fault_replica_a_kill9 fault_replica_b_sigterm; do
        # The first cycle always completes, so every fault happens at least once.
        if ((cycle > 1)) && (($(date +%s) + GAP >= END_S)); then break 2; fi
        "$fault"
        sleep "$GAP"
    done
done
remaining=$((END_S - $(date +%s)))
((remaining <= 0)) || sleep "$remaining"

event load_stop "faults: $FAULT_COUNTS"
touch "$STOP"
# pgbench runs are bounded by -t; a client still running after 3 minutes hangs.
deadline=$(($(date +%s) + 180))
for pid in "${LOOP_PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && (($(date +%s) < deadline)); do sleep 1; done
done
HUNG=0
for pid in "${LOOP_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
        HUNG=$((HUNG + 1))
        pkill -TERM -P "$pid" 2>/dev/null || true
    fi
done
echo "$HUNG" >"$WORK/hung-loops"
wait "$WEBHOOK_PID" || log "webhook sender exited $?"
wait "$SAMPLER_PID" 2>/dev/null || true
event clients_stopped "hung loops: $HUNG"
# Two flush intervals and a lease TTL: usage written, leases of the killed
# replica expired.
sleep $((2 * FLUSH_INTERVAL_S + 10))

REPORT="$WORK/report.md"
set +e
python3 "$LT_DIR/soak_reconcile.py" --work "$WORK" --token "$ADMIN_TOKEN" \
    --http "$HTTP_A" "$HTTP_B" --proxy "$PROXY_A" "$PROXY_B" --pg-port "$PG_PORT" --pg-sock "$PG_SOCK" \
    --redis-port "$REDIS_PORT" --mongo-port "$MONGO_PORT" --flush-interval "$FLUSH_INTERVAL_S" \
    --minutes "$MINUTES" --start-ms "$START_MS" --role "$ROLE" --db "$DB" \
    --command "load-tests/soak.sh $MINUTES" --machine "$(machine_note "at the end")" \
    --build "$RUN_BUILD_NOTE" >"$REPORT"
verdict=$?
set -e
cat "$REPORT"
if [[ "${WRITE_RESULTS:-1}" != 0 ]]; then
    replace_section soak "$REPORT"
    log "section 'soak' of $RESULTS_FILE replaced"
fi
exit "$verdict"
