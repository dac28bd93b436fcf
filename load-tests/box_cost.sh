#!/usr/bin/env bash
# Where the whole machine's CPU goes per pgbench -S transaction: PostgreSQL,
# pgbench, the middleman (PgBouncer or the Dynabase proxy), interrupts and
# idle time, for each target side by side.
#
#   load-tests/box_cost.sh
#
# On a 2-core box shared by pgbench, PostgreSQL and the middleman, TPS at
# high concurrency is 2 cores ÷ (CPU per transaction of everything) unless
# the CPUs sit idle. This shows which part of that differs between targets,
# and how much the same part (PostgreSQL's own work) moves from one run to
# the next on a shared VM.
#
# Environment:
#   MODES     pgbench query modes                    (default "simple")
#   CLIENTS   client counts                          (default "32")
#   ROUNDS    rounds (each: every target once)       (default 3)
#   DURATION  seconds per pgbench run; the window measured is the run minus
#             1.5 s at each end, so connection set-up is outside it (default 9)
#   WRITE_RESULTS  1 = replace the section in load-tests/RESULTS.md (default 1)
#
# Each run reads /proc/PID/stat (user and system ticks) of every process and
# /proc/stat (machine idle, irq, softirq) at both ends of the window; a
# process counts towards its group (postgres: the postmaster and backends,
# pgbench, pgbouncer, dynabase) if it lived through the window. The number of
# transactions in the window comes from pgbench's per-second progress lines.
# Odd rounds run direct → pgbouncer → proxy, even rounds the reverse.
# Needs what proxy_vs_pgbouncer.sh needs.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODES="${MODES:-simple}"
CLIENTS="${CLIENTS:-32}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-9}"
SCALE="${SCALE:-10}"
WRITE_RESULTS="${WRITE_RESULTS:-1}"
bench_settings

((DURATION >= 5)) || die "DURATION must be at least 5 (the window is the run minus 1.5 s at each end)"
require_tools pgbench psql /usr/sbin/pgbouncer python3 curl
port_open "$PG_HOST" "$PG_PORT" || die "no PostgreSQL on $PG_HOST:$PG_PORT (scripts/services.sh start)"

make_workdir box-cost
trap 'finish_run $?' EXIT
trap 'exit 130' INT TERM

start_bench_targets

COMMAND="load-tests/box_cost.sh"
[[ "$MODES" != simple ]] && COMMAND="MODES=\"$MODES\" $COMMAND"
[[ "$CLIENTS" != 32 ]] && COMMAND="CLIENTS=\"$CLIENTS\" $COMMAND"
[[ "$ROUNDS" != 3 ]] && COMMAND="ROUNDS=$ROUNDS $COMMAND"
[[ "$DURATION" != 9 ]] && COMMAND="DURATION=$DURATION $COMMAND"
STARTED="$(date -u '+%Y-%m-%d %H:%M UTC')"
MACHINE="$(machine_note "at start")"

# Warm every path once (connections, caches) without measuring.
for port_user in "$PG_PORT $ROLE" "$PGB_PORT $ROLE" "$PROXY_PORT $ROLE.$ORG"; do
    read -r port user <<<"$port_user"
    pgbench -n -S -c 8 -j 2 -T 2 -h 127.0.0.1 -p "$port" -U "$user" "$DB" >/dev/null 2>&1 \
        || die "warm-up through port $port failed"
done

REPORT="$WORK/report.md"
python3 - "$MODES" "$CLIENTS" "$ROUNDS" "$DURATION" "$DB" \
    "direct=$PG_PORT=$ROLE" "pgbouncer=$PGB_PORT=$ROLE" "proxy=$PROXY_PORT=$ROLE.$ORG" >"$WORK/tables.md" <<'PY'
import os, re, statistics, subprocess, sys, time

modes, clients, rounds, duration, db = sys.argv[1].split(), sys.argv[2].split(), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
targets = {}
for arg in sys.argv[6:]:
    name, port, user = arg.split("=", 2)
    targets[name] = (port, user)
HZ = os.sysconf("SC_CLK_TCK")
GROUPS = ("postgres", "pgbench", "pgbouncer", "dynabase")

def snap():
    procs = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        procs[pid] = (name, int(fields[11]), int(fields[12]))
    machine = list(map(int, open("/proc/stat").readline().split()[1:9]))
    return procs, machine, time.monotonic()

def group(name):
    if name.startswith("postgres"):
        return "postgres"
    return name if name in GROUPS else None

def measure(target, mode, c):
    port, user = targets[target]
    run = subprocess.Popen(
        ["pgbench", "-n", "-S", "-M", mode, "-c", c, "-j", str(min(int(c), 2)), "-T", str(duration),
         "-P", "1", "-h", "127.0.0.1", "-p", port, "-U", user, db],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.5)
    a = snap()
    time.sleep(duration - 3)
    b = snap()
    out = run.communicate()[0]
    if run.returncode != 0:
        sys.exit(f"pgbench against {target} failed:\n{out}")
    # Progress lines cover whole seconds; the window is [1.5, duration - 1.5].
    rates = [float(r) for s, r in re.findall(r"progress: (\d+)\.\d s, ([0-9.]+) tps", out) if 2 <= int(s) <= duration - 1]
    window = b[2] - a[2]
    txns = statistics.mean(rates) * window
    per = lambda ticks: ticks / HZ / txns * 1e6
    row = {"tps": statistics.mean(rates)}
    for pid, (name, u, s) in b[0].items():
        g = group(name)
        if g and pid in a[0]:
            row[g + " user"] = row.get(g + " user", 0) + per(u - a[0][pid][1])
            row[g + " sys"] = row.get(g + " sys", 0) + per(s - a[0][pid][2])
    d = [y - x for x, y in zip(a[1], b[1])]
    row["idle"] = per(d[3] + d[4])
    row["irq+softirq"] = per(d[5] + d[6])
    row["all busy"] = per(sum(d) - d[3] - d[4])
    return row

def middleman(target):
    return {"pgbouncer": "pgbouncer", "proxy": "dynabase"}.get(target)

cols = ["TPS", "all busy", "idle", "irq+softirq", "postgres user", "postgres sys", "pgbench user+sys",
        "middleman user", "middleman sys"]
def cells(target, row):
    m = middleman(target)
    vals = [row["tps"], row["all busy"], row["idle"], row["irq+softirq"], row.get("postgres user", 0),
            row.get("postgres sys", 0), row.get("pgbench user", 0) + row.get("pgbench sys", 0),
            row.get(f"{m} user", 0) if m else None, row.get(f"{m} sys", 0) if m else None]
    return vals

fmt = lambda v, i: "–" if v is None else (f"{v:,.0f}" if i == 0 else f"{v:.1f}")
medians, raw = [], []
for mode in modes:
    for c in clients:
        rows = {t: [] for t in targets}
        for r in range(1, rounds + 1):
            order = list(targets) if r % 2 else list(reversed(targets))
            for t in order:
                row = measure(t, mode, c)
                rows[t].append(row)
                raw.append((mode, c, r, t, cells(t, row)))
                print(f"[box_cost.sh] {mode} c={c} round {r} {t}: {row['tps']:.0f} tps", file=sys.stderr)
        for t in targets:
            per_col = list(zip(*[cells(t, row) for row in rows[t]]))
            medians.append((mode, c, t, [None if v[0] is None else statistics.median(v) for v in per_col]))

head = "| mode | clients | target | " + " | ".join(cols) + " |"
rule = "|---|---:|---|" + "---:|" * len(cols)
print("Median over rounds; all columns but TPS in CPU µs per transaction (2 cores).")
print()
print(head)
print(rule)
for mode, c, t, vals in medians:
    print(f"| {mode} | {c} | {t} | " + " | ".join(fmt(v, i) for i, v in enumerate(vals)) + " |")
print()
print("Every run, in run order:")
print()
print(head.replace("| target |", "| round | target |"))
print(rule.replace("|---|", "|---|---:|", 1))
for mode, c, r, t, vals in raw:
    print(f"| {mode} | {c} | {r} | {t} | " + " | ".join(fmt(v, i) for i, v in enumerate(vals)) + " |")
PY

{
    echo "## Whole-machine CPU per transaction: direct vs PgBouncer vs proxy"
    echo
    echo "Run $STARTED with \`$COMMAND\`."
    echo
    echo "Each run: \`pgbench -n -S -M <mode> -c <clients> -j min(clients,2) -T $DURATION -P 1\`, measured"
    echo "from 1.5 s after the start to 1.5 s before the end. CPU from /proc/PID/stat of every process"
    echo "alive through the window, grouped (postgres: postmaster and backends); idle and"
    echo "irq+softirq from /proc/stat (loopback TCP's receive path runs in softirq). Proxy: release"
    echo "build, default configuration, org tier enterprise. PgBouncer $(pgbouncer_version), session mode."
    echo "Build: $(build_note)."
    echo
    echo "Machine: $MACHINE."
    echo
    cat "$WORK/tables.md"
} >"$REPORT"
cat "$REPORT"
if [[ "$WRITE_RESULTS" == 1 ]]; then
    replace_section box_cost "$REPORT"
    log "section box_cost written to $RESULTS_FILE"
fi
