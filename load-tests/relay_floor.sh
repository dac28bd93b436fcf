#!/usr/bin/env bash
# How close the proxy is to the cheapest possible relay: pgbench -S through
# PgBouncer, the Dynabase proxy and two bare TCP relays (relay_floor: tokio's
# copy_bidirectional on one current-thread runtime, and a single mio
# readiness loop), interleaved, with each middleman's own CPU per
# transaction.
#
#   load-tests/relay_floor.sh
#
# The bare relays do nothing but copy bytes (src/bin/relay_floor.rs), so
# they bound what any relay design can gain on this machine: the tokio one
# is the proxy's substrate without the proxy, the mio one PgBouncer's shape
# without PgBouncer.
#
# Environment:
#   MODES     pgbench query modes                 (default "simple")
#   CLIENTS   client counts                       (default "8 32")
#   ROUNDS    rounds per point (each: every target once, the order
#             reversed every other round)         (default 8)
#   DURATION  seconds per pgbench run             (default 5)
#   WRITE_RESULTS  1 = replace the section in load-tests/RESULTS.md (default 1)
#
# Per point: median TPS per target, the median of the rounds' own
# target/PgBouncer ratios, and the median user and system CPU µs per
# transaction of the middleman process (/proc/PID/stat around each run).
# Needs what proxy_vs_pgbouncer.sh needs, plus
# `cargo build --release -p dynabase-load-tests --bin relay_floor`.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODES="${MODES:-simple}"
CLIENTS="${CLIENTS:-8 32}"
ROUNDS="${ROUNDS:-8}"
DURATION="${DURATION:-5}"
SCALE="${SCALE:-10}"
WRITE_RESULTS="${WRITE_RESULTS:-1}"
bench_settings
RELAY_BIN="$REPO_ROOT/target/release/relay_floor"

require_tools pgbench psql /usr/sbin/pgbouncer python3 curl
[[ -x "$RELAY_BIN" ]] || die "no $RELAY_BIN (cargo build --release -p dynabase-load-tests --bin relay_floor)"
port_open "$PG_HOST" "$PG_PORT" || die "no PostgreSQL on $PG_HOST:$PG_PORT (scripts/services.sh start)"

make_workdir relay-floor
TOKIO_PID=""
MIO_PID=""
trap 'finish_run $? stop_relays' EXIT
trap 'exit 130' INT TERM
stop_relays() {
    stop_pid "$TOKIO_PID" 2
    stop_pid "$MIO_PID" 2
}

start_bench_targets
TOKIO_PORT="$(free_port)"
"$RELAY_BIN" tokio "$TOKIO_PORT" "$PG_HOST:$PG_PORT" >"$WORK/relay-tokio.log" 2>&1 &
TOKIO_PID=$!
MIO_PORT="$(free_port)"
"$RELAY_BIN" mio "$MIO_PORT" "$PG_HOST:$PG_PORT" >"$WORK/relay-mio.log" 2>&1 &
MIO_PID=$!
wait_port 127.0.0.1 "$TOKIO_PORT" 10 "relay_floor tokio"
wait_port 127.0.0.1 "$MIO_PORT" 10 "relay_floor mio"

COMMAND="load-tests/relay_floor.sh"
[[ "$MODES" != simple ]] && COMMAND="MODES=\"$MODES\" $COMMAND"
[[ "$CLIENTS" != "8 32" ]] && COMMAND="CLIENTS=\"$CLIENTS\" $COMMAND"
[[ "$ROUNDS" != 8 ]] && COMMAND="ROUNDS=$ROUNDS $COMMAND"
[[ "$DURATION" != 5 ]] && COMMAND="DURATION=$DURATION $COMMAND"
STARTED="$(date -u '+%Y-%m-%d %H:%M UTC')"
MACHINE="$(machine_note "at start")"

TARGETS=("pgbouncer=$PGB_PORT=$ROLE=$PGB_PID" "proxy=$PROXY_PORT=$ROLE.$ORG=$PROXY_PID"
    "tokio relay=$TOKIO_PORT=$ROLE=$TOKIO_PID" "mio relay=$MIO_PORT=$ROLE=$MIO_PID")
for t in "${TARGETS[@]}"; do
    IFS== read -r name port user _ <<<"$t"
    pgbench -n -S -c 8 -j 2 -T 2 -h 127.0.0.1 -p "$port" -U "$user" "$DB" >/dev/null 2>&1 \
        || die "warm-up through $name failed"
done

python3 - "$MODES" "$CLIENTS" "$ROUNDS" "$DURATION" "$DB" "${TARGETS[@]}" >"$WORK/tables.md" <<'PY'
import os, re, statistics, subprocess, sys

modes, clients, rounds, duration, db = sys.argv[1].split(), sys.argv[2].split(), int(sys.argv[3]), sys.argv[4], sys.argv[5]
targets = [arg.split("=", 3) for arg in sys.argv[6:]]
HZ = os.sysconf("SC_CLK_TCK")

def ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])

def run(port, user, pid, mode, c):
    u0, s0 = ticks(pid)
    out = subprocess.run(["pgbench", "-n", "-S", "-M", mode, "-c", c, "-j", str(min(int(c), 2)), "-T", duration,
                          "-h", "127.0.0.1", "-p", port, "-U", user, db], capture_output=True, text=True)
    u1, s1 = ticks(pid)
    tps = re.search(r"^tps = ([0-9.]+)", out.stdout, re.M)
    n = re.search(r"^number of transactions actually processed: (\d+)", out.stdout, re.M)
    if out.returncode != 0 or not tps or not n:
        sys.exit(f"pgbench through port {port} failed:\n{out.stdout}{out.stderr}")
    per = lambda t: t / HZ / int(n[1]) * 1e6
    return float(tps[1]), per(u1 - u0), per(s1 - s0)

med = statistics.median
print("| mode | clients | target | median TPS | target/PgBouncer (paired median) | rounds' ratios | user µs / txn | sys µs / txn |")
print("|---|---:|---|---:|---:|---|---:|---:|")
for mode in modes:
    for c in clients:
        res = {name: [] for name, *_ in targets}
        for r in range(rounds):
            for name, port, user, pid in (targets if r % 2 == 0 else list(reversed(targets))):
                res[name].append(run(port, user, pid, mode, c))
            print(f"[relay_floor.sh] {mode} c={c} round {r + 1} done", file=sys.stderr)
        base = [t for t, _, _ in res["pgbouncer"]]
        for name, *_ in targets:
            tps = [t for t, _, _ in res[name]]
            ratios = [a / b for a, b in zip(tps, base)]
            print(f"| {mode} | {c} | {name} | {med(tps):,.0f} | {med(ratios):.2f} | "
                  + " ".join(f"{x:.2f}" for x in ratios)
                  + f" | {med(u for _, u, _ in res[name]):.1f} | {med(s for _, _, s in res[name]):.1f} |")
PY

REPORT="$WORK/report.md"
{
    echo "## Relay floor: proxy vs PgBouncer vs bare tokio and mio relays"
    echo
    echo "Run $STARTED with \`$COMMAND\`."
    echo
    echo "Each run: \`pgbench -n -S -M <mode> -c <clients> -j min(clients,2) -T $DURATION\`; $ROUNDS rounds"
    echo "per point, every target once per round, the order reversed every other round. The bare relays"
    echo "(\`relay_floor tokio\` and \`relay_floor mio\`, src/bin/relay_floor.rs) copy bytes and nothing else,"
    echo "on one thread each. Proxy: release build, default configuration, org tier enterprise."
    echo "PgBouncer $(pgbouncer_version), session mode. CPU: the middleman process's user and system time"
    echo "per transaction (/proc/PID/stat). Build: $(build_note)."
    echo
    echo "Machine: $MACHINE."
    echo
    cat "$WORK/tables.md"
} >"$REPORT"
cat "$REPORT"
if [[ "$WRITE_RESULTS" == 1 ]]; then
    replace_section relay_floor "$REPORT"
    log "section relay_floor written to $RESULTS_FILE"
fi
