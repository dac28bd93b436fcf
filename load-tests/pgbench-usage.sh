#!/usr/bin/env bash
# pgbench -S through the proxy with usage metering on and off, in one run.
#
#   load-tests/pgbench-usage.sh [rounds] [seconds] [clients]   (default 3 20 8)
#
# Needs the local services (scripts/services.sh start) and builds the
# release binary. Starts two dynabase servers on the embedded store — one
# with usage.enabled = true, one with false — on loopback ports, each with
# an ENTERPRISE org (no rate limit) whose upstream is the local PostgreSQL,
# then alternates pgbench -S rounds between them (on, off, on, off, ...) so
# both see the same machine state. Prints a Markdown section for
# load-tests/RESULTS.md. Traffic stays on 127.0.0.1; every round is bounded
# by -T.
set -euo pipefail

ROUNDS="${1:-3}"
SECONDS_PER_ROUND="${2:-20}"
CLIENTS="${3:-8}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
SERVICES_ENV="${DYNABASE_SERVICES_DIR:-$REPO_ROOT/.services}/env"
# shellcheck disable=SC1090
[[ -f "$SERVICES_ENV" ]] && source "$SERVICES_ENV"
PG_HOST="${DYNABASE_TEST_PG_HOST:-127.0.0.1}"
PG_PORT="${DYNABASE_TEST_PG_PORT:-5432}"
export PGPASSWORD="${DYNABASE_TEST_PG_PASSWORD:-postgres}"
SUPER="${DYNABASE_TEST_PG_SUPERUSER:-postgres}"
DB=dynabase_pgbench
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
BIN="$TARGET_DIR/release/dynabase"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "building the release binary..." >&2
cargo build --release --bin dynabase >&2

psql_super() { psql -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$SUPER" "$@"; }
if ! psql_super -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    psql_super -d postgres -c "CREATE DATABASE $DB"
    pgbench -q -i -s 1 -h "$PG_HOST" -p "$PG_PORT" -U "$SUPER" "$DB" >&2
    psql_super -d "$DB" -c "GRANT SELECT ON ALL TABLES IN SCHEMA public TO trust_user"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME ENABLED → sets PROXY_PORT_<NAME>
start() {
    local name="$1" enabled="$2" http proxy
    http="$(free_port)"
    proxy="$(free_port)"
    mkdir -p "$WORK/$name"
    env DYNABASE_ADMIN_TOKEN=bench DYNABASE__STORE__DATA_DIR="$WORK/$name" \
        DYNABASE__HTTP__HOST=127.0.0.1 PORT="$http" \
        DYNABASE__PROXY__HOST=127.0.0.1 DYNABASE__PROXY__PORT="$proxy" \
        DYNABASE__USAGE__ENABLED="$enabled" RUST_LOG=warn \
        "$BIN" serve >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$http/health" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fs -X POST "http://127.0.0.1:$http/admin/orgs" -H 'Authorization: Bearer bench' \
        -d "{\"id\":\"bench\",\"name\":\"Bench\",\"tier\":\"enterprise\",\"upstream\":\"$PG_HOST:$PG_PORT\"}" >/dev/null
    printf -v "PROXY_PORT_$name" '%s' "$proxy"
    printf -v "HTTP_PORT_$name" '%s' "$http"
}

start on true
start off false

# run PORT → prints TPS
run() {
    pgbench -n -S -c "$CLIENTS" -j 2 -T "$SECONDS_PER_ROUND" \
        -h 127.0.0.1 -p "$1" -U trust_user.bench "$DB" 2>/dev/null |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

declare -a ON OFF
for r in $(seq "$ROUNDS"); do
    ON+=("$(run "$PROXY_PORT_on")")
    OFF+=("$(run "$PROXY_PORT_off")")
    echo "round $r: on ${ON[-1]} tps, off ${OFF[-1]} tps" >&2
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
MON="$(median "${ON[@]}")"
MOFF="$(median "${OFF[@]}")"
RATIO="$(awk -v a="$MON" -v b="$MOFF" 'BEGIN {printf "%.1f", 100*a/b}')"
CYCLES="$(curl -fs "http://127.0.0.1:$HTTP_PORT_on/metrics" | sed -n 's/^dynabase_usage_records_written_total \(.*\)/\1/p')"

cat <<EOF

## Usage metering: pgbench -S through the proxy, usage on vs off

$(date -u +%Y-%m-%d), $(nproc) cores, \`load-tests/pgbench-usage.sh $ROUNDS $SECONDS_PER_ROUND $CLIENTS\`
(pgbench -S, $CLIENTS clients, 2 threads, ${SECONDS_PER_ROUND} s per round, rounds alternating on/off;
release build, embedded store, ENTERPRISE org, local PostgreSQL $(psql_super -d postgres -tAc 'SHOW server_version' | cut -d' ' -f1)).

| round | usage on (tps) | usage off (tps) |
|---|---|---|
$(for i in "${!ON[@]}"; do echo "| $((i + 1)) | ${ON[$i]} | ${OFF[$i]} |"; done)
| **median** | **$MON** | **$MOFF** |

Usage on / off: **$RATIO %** (target ≥ 97 %). Usage records written by the "on" server: ${CYCLES:-?}.
EOF
