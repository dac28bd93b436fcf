#!/usr/bin/env bash
# Where a proxied query's time goes: CPU time, context switches and system
# calls per pgbench -S transaction, for the Dynabase proxy and for PgBouncer.
#
#   load-tests/per_query_cost.sh
#
# Unlike TPS, these are counts per transaction, so they hardly depend on what
# else the (shared, 2-core) machine is doing.
#
# Environment:
#   TXNS         transactions per measurement run       (default 20000)
#   STRACE_TXNS  transactions per `strace -c` run        (default 5000)
#   MODES        pgbench query modes                     (default "simple prepared")
#   CLIENTS      client counts                           (default "1 8")
#   WRITE_RESULTS  1 = replace the section in RESULTS.md (default 1)
#
# For each target, mode and client count:
#   1. pgbench -n -S -M <mode> -c <clients> -t <TXNS/clients>; the process's
#      CPU time (sum over its threads of /proc/PID/task/*/schedstat, ns) and
#      context switches (voluntary + involuntary, all threads) are read before
#      and after.
#   2. The same with STRACE_TXNS transactions under `strace -c -f -p PID`
#      (all threads); syscalls per transaction by name. strace slows the
#      process down a lot, so no timing comes from this run.
# Needs the services (scripts/services.sh start), pgbench, /usr/sbin/pgbouncer,
# strace and target/release/dynabase; uses the `bench` database made by
# proxy_vs_pgbouncer.sh (created here too when missing).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TXNS="${TXNS:-20000}"
STRACE_TXNS="${STRACE_TXNS:-5000}"
MODES="${MODES:-simple prepared}"
CLIENTS="${CLIENTS:-1 8}"
SCALE="${SCALE:-10}"
WRITE_RESULTS="${WRITE_RESULTS:-1}"
bench_settings

require_tools pgbench psql strace python3 curl
port_open "$PG_HOST" "$PG_PORT" || die "no PostgreSQL on $PG_HOST:$PG_PORT (scripts/services.sh start)"

make_workdir per-query-cost
trap 'finish_run $?' EXIT
trap 'exit 130' INT TERM

start_bench_targets

target_conn() {
    case "$1" in
        pgbouncer) echo "$PGB_PID 127.0.0.1 $PGB_PORT $ROLE" ;;
        proxy) echo "$PROXY_PID 127.0.0.1 $PROXY_PORT $ROLE.$ORG" ;;
    esac
}

# snap PID FILE: per thread "tid<TAB>name<TAB>cpu ns<TAB>context switches";
# the main thread is named "main" (for the proxy it runs the actix system
# arbiter, i.e. the actors).
snap() {
    local t tid name
    for t in /proc/"$1"/task/*; do
        tid="${t##*/}"
        if [[ "$tid" == "$1" ]]; then name=main; else name="$(tr ' |' _/ <"$t/comm" 2>/dev/null || echo gone)"; fi
        printf '%s\t%s\t%s\t%s\n' "$tid" "$name" \
            "$(awk '{print $1}' "$t/schedstat" 2>/dev/null || echo 0)" \
            "$(awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ {s += $2} END {printf "%.0f", s}' "$t/status" 2>/dev/null || echo 0)"
    done >"$2"
}

RAW="$WORK/raw.tsv"
printf 'target\tmode\tclients\ttxns\tbefore\tafter\ttps\tstrace_txns\tstrace_file\n' >"$RAW"
for mode in $MODES; do
    for c in $CLIENTS; do
        for t in pgbouncer proxy; do
            read -r pid host port user <<<"$(target_conn "$t")"
            jobs=$((c < 2 ? c : 2))
            per_client=$((TXNS / c))
            # warm the path (connections, caches) without counting
            pgbench -n -S -M "$mode" -c "$c" -j "$jobs" -t 500 -h "$host" -p "$port" -U "$user" "$DB" >/dev/null 2>&1
            snap "$pid" "$WORK/snap-$t-$mode-$c.before"
            out="$WORK/run-$t-$mode-$c.log"
            pgbench -n -S -M "$mode" -c "$c" -j "$jobs" -t "$per_client" -h "$host" -p "$port" -U "$user" "$DB" >"$out" 2>&1 \
                || { cat "$out" >&2; die "pgbench against $t failed"; }
            snap "$pid" "$WORK/snap-$t-$mode-$c.after"
            tps="$(sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\).*/\1/p' "$out")"
            # Connection setup is inside the window too; at 1-8 connections
            # against thousands of transactions it is noise.
            s_per_client=$((STRACE_TXNS / c))
            sfile="$WORK/strace-$t-$mode-$c.txt"
            strace -c -f -o "$sfile" -p "$pid" 2>"$WORK/strace-$t-$mode-$c.err" &
            spid=$!
            sleep 1
            pgbench -n -S -M "$mode" -c "$c" -j "$jobs" -t "$s_per_client" -h "$host" -p "$port" -U "$user" "$DB" >"$out.strace" 2>&1 \
                || { cat "$out.strace" >&2; die "pgbench (strace) against $t failed"; }
            kill -INT "$spid"
            wait "$spid" || true
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$mode" "$c" "$((per_client * c))" \
                "$WORK/snap-$t-$mode-$c.before" "$WORK/snap-$t-$mode-$c.after" "$tps" "$((s_per_client * c))" "$sfile" >>"$RAW"
            log "$t $mode c=$c: tps $tps (unstraced run), strace run done"
        done
    done
done

REPORT="$WORK/report.md"
python3 - "$RAW" >"$WORK/tables.md" <<'PY'
import csv, re, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))

def strace_counts(path):
    counts = {}
    for line in open(path):
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) >= 5 and re.match(r"^[0-9.]+$", parts[0]) and parts[-1] not in ("total",):
            name = parts[-1]
            calls = int(parts[3])
            counts[name] = counts.get(name, 0) + calls
    return counts

def snap(path):
    out = {}
    for line in open(path):
        tid, name, cpu, ctx = line.rstrip("\n").split("\t")
        out[tid] = (name, int(cpu or 0), int(ctx or 0))
    return out

print("| target | mode | clients | CPU µs / txn | context switches / txn | by thread: CPU µs, switches / txn | syscalls / txn | top syscalls / txn (strace -c) |")
print("|---|---|---:|---:|---:|---|---:|---|")
for r in rows:
    n = int(r["txns"])
    a, b = snap(r["before"]), snap(r["after"])
    threads = {}
    for tid, (name, cpu, ctx) in b.items():
        cpu0, ctx0 = a.get(tid, (name, 0, 0))[1:]
        d = threads.setdefault(name, [0, 0])
        d[0] += cpu - cpu0
        d[1] += ctx - ctx0
    cpu_us = sum(v[0] for v in threads.values()) / n / 1000
    ctx = sum(v[1] for v in threads.values()) / n
    by_thread = "; ".join(
        f"{name} {v[0] / n / 1000:.1f}, {v[1] / n:.2f}"
        for name, v in sorted(threads.items(), key=lambda kv: -kv[1][0])
        if v[0] / n >= 100 or v[1] / n >= 0.01
    )
    sn = int(r["strace_txns"])
    counts = strace_counts(r["strace_file"])
    total = sum(counts.values()) / sn
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
    tops = ", ".join(f"{k} {v / sn:.2f}" for k, v in top if v / sn >= 0.01)
    print(f"| {r['target']} | {r['mode']} | {r['clients']} | {cpu_us:.1f} | {ctx:.2f} | {by_thread} | {total:.2f} | {tops} |")
PY
{
    echo "## Per-transaction cost: proxy vs PgBouncer"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') with \`${DYNABASE__PROXY__WORKER_THREADS:+DYNABASE__PROXY__WORKER_THREADS=$DYNABASE__PROXY__WORKER_THREADS }${DYNABASE__PROXY__BUSY_POLL:+DYNABASE__PROXY__BUSY_POLL=$DYNABASE__PROXY__BUSY_POLL }$([[ "$MODES" != "simple prepared" ]] && echo "MODES=\"$MODES\" ")$([[ "$CLIENTS" != "1 8" ]] && echo "CLIENTS=\"$CLIENTS\" ")TXNS=$TXNS STRACE_TXNS=$STRACE_TXNS load-tests/per_query_cost.sh\`."
    echo
    echo "pgbench -n -S (one SELECT per transaction: one query cycle) through each target; the target"
    echo "process's CPU time (all threads, /proc/PID/task/*/schedstat) and context switches"
    echo "(/proc/PID/task/*/status) over $TXNS transactions, and its system calls over $STRACE_TXNS"
    echo "transactions under \`strace -c -f -p PID\` (separate run). Counts per transaction do not"
    echo "depend much on machine load; CPU µs somewhat do (cache misses, frequency)."
    echo "Build: $(build_note)."
    echo
    echo "Machine: $(machine_note "at end")."
    echo
    cat "$WORK/tables.md"
} >"$REPORT"
cat "$REPORT"
if [[ "$WRITE_RESULTS" == 1 ]]; then
    replace_section per_query_cost "$REPORT"
    log "section per_query_cost written to $RESULTS_FILE"
fi
