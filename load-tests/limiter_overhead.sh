#!/usr/bin/env bash
# End-to-end cost of the rate limiter: pgbench -S through one proxy, for an
# organization whose tier has a limit far above the load (the limiter decides
# every cycle) and for one on an unlimited tier (no limiter work at all),
# interleaved in one run.
#
#   load-tests/limiter_overhead.sh
#
# Environment: DURATION (10 s), ROUNDS (3), CLIENTS (8), MODE (prepared),
# SCALE (10). Needs scripts/services.sh running and the release binary.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CLIENTS="${CLIENTS:-8}"
MODE="${MODE:-prepared}"
SCALE="${SCALE:-10}"
PG_HOST=127.0.0.1
PG_PORT="${DYNABASE_TEST_PG_PORT:-5432}"
ROLE="${DYNABASE_TEST_PG_TRUST_USER:-trust_user}"
DB=bench
export PGSSLMODE=disable
unset PGPASSWORD PGUSER PGDATABASE PGHOST PGPORT

WORK="$(mktemp -d /tmp/limiter-overhead.XXXXXX)"
PROXY_PID=""
cleanup() { stop_pid "$PROXY_PID" 25; rm -rf "$WORK"; }
trap cleanup EXIT

ensure_bench_db "$PG_HOST" "$PG_PORT" "$ROLE" "$DB" "$SCALE"
# PRO with a limit no pgbench run here can reach: every cycle is decided.
export DYNABASE__TIERS__PRO__QPS=100000000
start_proxy "$WORK/dynabase"
create_org limited pro "$PG_HOST:$PG_PORT"
create_org unlimited enterprise "$PG_HOST:$PG_PORT"

run() { # org round
    local out="$WORK/$1-$2.log" jobs=$((CLIENTS < 2 ? CLIENTS : 2))
    pgbench -n -S -M "$MODE" -c "$CLIENTS" -j "$jobs" -T "$DURATION" \
        -h 127.0.0.1 -p "$PROXY_PORT" -U "$ROLE.$1" "$DB" >"$out" 2>&1 || { cat "$out" >&2; die "pgbench failed"; }
    sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\).*/\1/p' "$out"
}

declare -a LIM UNL
for ((r = 1; r <= ROUNDS; r++)); do
    LIM+=("$(run limited "$r")")
    UNL+=("$(run unlimited "$r")")
    log "round $r: limiter active ${LIM[-1]} tps, no limiter ${UNL[-1]} tps"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
lim="$(median "${LIM[@]}")"
unl="$(median "${UNL[@]}")"
ratio="$(awk -v a="$lim" -v b="$unl" 'BEGIN {printf "%.3f", a/b}')"

body="$WORK/section.md"
{
    echo "## Rate limiter: limiter active vs no limiter (pgbench -S through the proxy)"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') with \`load-tests/limiter_overhead.sh\`"
    echo "(\`pgbench -n -S -M $MODE -c $CLIENTS -T $DURATION\`, $ROUNDS interleaved rounds, medians)."
    echo "Active: tier PRO with its QPS set to 100,000,000, so every cycle is checked and admitted."
    echo "None: tier ENTERPRISE (unlimited), so the gate does no work. $(machine_note)."
    echo
    echo "| limiter | TPS (median) | rounds |"
    echo "|---|---:|---|"
    echo "| active | $lim | ${LIM[*]} |"
    echo "| none | $unl | ${UNL[*]} |"
    echo
    echo "Active / none: **$ratio** (target ≥ 0.97)."
} >"$body"
replace_section limiter_overhead "$body"
cat "$body"
