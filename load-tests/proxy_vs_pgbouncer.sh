#!/usr/bin/env bash
# Throughput and added latency of the Dynabase PostgreSQL proxy against
# PgBouncer (session mode) and against PostgreSQL directly, with pgbench -S.
#
#   load-tests/proxy_vs_pgbouncer.sh
#
# Environment:
#   DURATION   seconds per pgbench run            (default 6)
#   ROUNDS     runs per target per point; median  (default 5)
#   MODES      pgbench query modes                (default "simple prepared")
#   CLIENTS    client counts                      (default "1 8 32")
#   SCALE      pgbench scale of database `bench`  (default 10)
#   WARMUP     seconds of unrecorded warm-up per target, 0 = none (default 5)
#   QUIET_PCT  a round counts only if, in each of its three runs, other
#              processes used at most this % of the machine's CPU (default 10;
#              100 = count every round)
#   MAX_ROUNDS stop adding rounds to a point after this many   (default 2×ROUNDS)
#   QUIET_WAIT before each run, wait up to this many seconds for the machine
#              to be quiet (≤ QUIET_PCT % busy)                  (default 20)
#   WRITE_RESULTS  1 = replace the section in load-tests/RESULTS.md (default 1)
#   SECTION    name of that section (default proxy_vs_pgbouncer), to keep
#              runs of other configurations next to the default one
#   DYNABASE__PROXY__WORKER_THREADS  passed to the proxy (default: its config,
#              one thread per core); noted in the report when set
#   DYNABASE__PROXY__BUSY_POLL       likewise (default: its config, 100us)
#
# Needs: scripts/services.sh start (PostgreSQL on 127.0.0.1:5432 with the
# roles postgres/postgres and trust_user), pgbench, psql, /usr/sbin/pgbouncer,
# target/release/dynabase. Everything it starts (PgBouncer, dynabase) lives in
# a temporary directory and is stopped on exit.
#
# Each measurement point (mode, clients) runs the three targets one after the
# other (a round), ROUNDS times. Odd rounds run direct → pgbouncer → proxy,
# even rounds proxy → pgbouncer → direct, so a drift in machine speed during
# a point favours neither middleman. The comparisons are paired: a round gives
# its own proxy/pgbouncer TPS ratio and its own latencies added over direct,
# and the table shows the medians of those per-round figures (the TPS columns
# are the medians of each target's runs, for scale). On this kind of shared
# VM consecutive 10 s runs of the same target differ by up to 20 %, so
# comparing runs far apart in time (median against median) measures the
# machine more than the middlemen.
#
# On a shared machine someone else's build can halve TPS for a run. Each run
# therefore records "foreign CPU": the machine's busy CPU time (incl. steal)
# minus what pgbench, PostgreSQL (postmaster and its backends, including ones
# that exited) and the target used, as a share of all CPUs over the run.
# Rounds where a run saw more than QUIET_PCT % are listed but not used, and
# more rounds are run (up to MAX_ROUNDS) to get ROUNDS clean ones. On a quiet
# machine this is exactly ROUNDS rounds.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-6}"
ROUNDS="${ROUNDS:-5}"
MODES="${MODES:-simple prepared}"
CLIENTS="${CLIENTS:-1 8 32}"
SCALE="${SCALE:-10}"
WARMUP="${WARMUP:-5}"
WRITE_RESULTS="${WRITE_RESULTS:-1}"
SECTION="${SECTION:-proxy_vs_pgbouncer}"
QUIET_PCT="${QUIET_PCT:-10}"
QUIET_WAIT="${QUIET_WAIT:-20}"
MAX_ROUNDS="${MAX_ROUNDS:-$((2 * ROUNDS))}"

bench_settings

require_tools pgbench psql /usr/sbin/pgbouncer python3 curl
port_open "$PG_HOST" "$PG_PORT" || die "no PostgreSQL on $PG_HOST:$PG_PORT (scripts/services.sh start)"

make_workdir proxy-vs-pgbouncer
trap 'finish_run $?' EXIT
trap 'exit 130' INT TERM

start_bench_targets

# target -> "host port user"
target_conn() {
    case "$1" in
        direct) echo "$PG_HOST $PG_PORT $ROLE" ;;
        pgbouncer) echo "127.0.0.1 $PGB_PORT $ROLE" ;;
        proxy) echo "127.0.0.1 $PROXY_PORT $ROLE.$ORG" ;;
    esac
}

target_pid() {
    case "$1" in
        direct) echo "" ;;
        pgbouncer) echo "$PGB_PID" ;;
        proxy) echo "$PROXY_PID" ;;
    esac
}

PG_PM_PID="$(listener_pid "$PG_PORT")"
[[ -n "$PG_PM_PID" ]] || log "cannot find the postmaster's pid; foreign CPU is not measured"
NCPU="$(nproc)"
HZ="$(getconf CLK_TCK)"

# run_pgbench TARGET MODE CLIENTS SECONDS OUTFILE -> sets FOREIGN_PCT
run_pgbench() {
    local host port user jobs tpid b0 o0 b1 o1 t0 t1 pgb_user pgb_sys
    read -r host port user <<<"$(target_conn "$1")"
    tpid="$(target_pid "$1")"
    jobs=$(($3 < 2 ? $3 : 2))
    read -r b0 o0 <<<"$(cpu_ticks "$tpid" -- "$PG_PM_PID")"
    t0="$(date +%s.%N)"
    # -n: no VACUUM before each run (pgbench -i vacuumed; -S only reads).
    local TIMEFORMAT='%U %S'
    { time pgbench -n -S -M "$2" -c "$3" -j "$jobs" -T "$4" -h "$host" -p "$port" -U "$user" "$DB" >"$5" 2>&1; } 2>"$5.time" \
        || { cat "$5" >&2; die "pgbench against $1 failed"; }
    sleep 0.2 # backends exit and are reaped
    t1="$(date +%s.%N)"
    read -r b1 o1 <<<"$(cpu_ticks "$tpid" -- "$PG_PM_PID")"
    read -r pgb_user pgb_sys <"$5.time"
    if [[ -n "$PG_PM_PID" ]]; then
        FOREIGN_PCT="$(awk -v b="$((b1 - b0))" -v o="$((o1 - o0))" -v u="$pgb_user" -v s="$pgb_sys" \
            -v hz="$HZ" -v dt="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" -v n="$NCPU" \
            'BEGIN {f = (b - o - (u + s) * hz) / (dt * hz * n) * 100; if (f < 0) f = 0; printf "%.0f", f}')"
    else
        FOREIGN_PCT=0
    fi
}

# sanity: each target answers
for t in direct pgbouncer proxy; do
    read -r host port user <<<"$(target_conn "$t")"
    psql -X -At -h "$host" -p "$port" -U "$user" -c 'SELECT count(*) FROM pgbench_branches' "$DB" >/dev/null \
        || die "cannot query $DB through $t"
done

MACHINE="$(machine_note "at start")"
STARTED="$(date -u '+%Y-%m-%d %H:%M UTC')"
COMMAND="DURATION=$DURATION ROUNDS=$ROUNDS load-tests/proxy_vs_pgbouncer.sh"
[[ "$MODES" != "simple prepared" ]] && COMMAND="MODES=\"$MODES\" $COMMAND"
[[ "$CLIENTS" != "1 8 32" ]] && COMMAND="CLIENTS=\"$CLIENTS\" $COMMAND"
[[ "$SCALE" != 10 ]] && COMMAND="SCALE=$SCALE $COMMAND"
[[ "$QUIET_PCT" != 10 ]] && COMMAND="QUIET_PCT=$QUIET_PCT $COMMAND"
[[ "$MAX_ROUNDS" != $((2 * ROUNDS)) ]] && COMMAND="MAX_ROUNDS=$MAX_ROUNDS $COMMAND"
PROXY_CONFIG="default configuration (config/default.toml)"
OVERRIDES=""
for var in DYNABASE__PROXY__WORKER_THREADS DYNABASE__PROXY__BUSY_POLL; do
    if [[ -n "${!var:-}" ]]; then
        COMMAND="$var=${!var} $COMMAND"
        key="${var#DYNABASE__PROXY__}"
        OVERRIDES="${OVERRIDES:+$OVERRIDES, }proxy.${key,,} = ${!var}"
    fi
done
[[ -n "$OVERRIDES" ]] && PROXY_CONFIG="default configuration (config/default.toml) except $OVERRIDES"
[[ "$SECTION" == proxy_vs_pgbouncer ]] || COMMAND="SECTION=$SECTION $COMMAND"

if [[ "$WARMUP" -gt 0 ]]; then
    log "warm-up: ${WARMUP}s per target (not recorded)"
    for t in direct pgbouncer proxy; do
        run_pgbench "$t" simple 8 "$WARMUP" "$WORK/warmup-$t.log"
        log "warm-up $t: foreign CPU ${FOREIGN_PCT}%"
    done
fi

RAW="$WORK/raw.tsv"
printf 'mode\tclients\ttarget\tround\ttps\tlatency_ms\tforeign_pct\n' >"$RAW"
npoints=$(($(wc -w <<<"$MODES") * $(wc -w <<<"$CLIENTS")))
log "$npoints points x 3 targets x $ROUNDS rounds x ${DURATION}s ≈ $((npoints * 3 * ROUNDS * DURATION / 60)) min on a quiet machine"
for mode in $MODES; do
    for c in $CLIENTS; do
        clean=0
        for ((r = 1; clean < ROUNDS && r <= MAX_ROUNDS; r++)); do
            worst=0
            order="direct pgbouncer proxy"
            ((r % 2 == 1)) || order="proxy pgbouncer direct"
            for t in $order; do
                out="$WORK/run-$mode-$c-$t-$r.log"
                wait_quiet "$QUIET_PCT" "$QUIET_WAIT" >/dev/null
                run_pgbench "$t" "$mode" "$c" "$DURATION" "$out"
                tps="$(sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\).*/\1/p' "$out")"
                lat="$(sed -nE 's/^latency average = ([0-9.]+) ms.*/\1/p' "$out")"
                [[ -n "$tps" && -n "$lat" ]] || { cat "$out" >&2; die "cannot parse pgbench output"; }
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$c" "$t" "$r" "$tps" "$lat" "$FOREIGN_PCT" >>"$RAW"
                log "$mode c=$c round $r $t: tps $tps, latency $lat ms, foreign CPU $FOREIGN_PCT%"
                ((FOREIGN_PCT <= worst)) || worst="$FOREIGN_PCT"
            done
            if ((worst <= QUIET_PCT)); then clean=$((clean + 1)); else log "round $r not clean (foreign CPU up to $worst%)"; fi
        done
        ((clean >= ROUNDS)) || log "$mode c=$c: only $clean clean round(s) in $MAX_ROUNDS"
    done
done

# --- report ---------------------------------------------------------------------------
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
REPORT="$WORK/report.md"
python3 - "$RAW" "$ROUNDS" "$QUIET_PCT" >"$WORK/tables.md" <<'PY'
import csv, statistics, sys
raw, rounds, quiet = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = list(csv.DictReader(open(raw), delimiter="\t"))
points = []
runs = {}  # (mode, clients) -> round -> target -> (tps, lat, foreign)
for r in rows:
    key = (r["mode"], int(r["clients"]))
    if key not in runs:
        points.append(key)
        runs[key] = {}
    runs[key].setdefault(int(r["round"]), {})[r["target"]] = (
        float(r["tps"]), float(r["latency_ms"]), int(r["foreign_pct"]))
med = statistics.median
targets = ("direct", "pgbouncer", "proxy")
out = []
out.append("| mode | clients | direct TPS | pgbouncer TPS | proxy TPS | proxy/pgbouncer (paired) | pgbouncer added latency vs direct (µs) | proxy added latency vs direct (µs) | rounds used |")
out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
verdicts = []
for key in points:
    all_rounds = runs[key]
    complete = [r for r, d in sorted(all_rounds.items()) if len(d) == 3]
    clean = [r for r in complete if max(v[2] for v in all_rounds[r].values()) <= quiet]
    used = clean if clean else complete
    note = f"{len(used)} of {len(all_rounds)}" + ("" if clean else " (none clean: all used)")
    t = {k: med(all_rounds[r][k][0] for r in used) for k in targets}
    # Paired: each round against itself, then the median over rounds.
    ratio = med(all_rounds[r]["proxy"][0] / all_rounds[r]["pgbouncer"][0] for r in used)
    added = {k: med((all_rounds[r][k][1] - all_rounds[r]["direct"][1]) * 1000 for r in used)
             for k in ("pgbouncer", "proxy")}
    add_b, add_p = added["pgbouncer"], added["proxy"]
    out.append(f"| {key[0]} | {key[1]} | {t['direct']:,.0f} | {t['pgbouncer']:,.0f} | {t['proxy']:,.0f} | {ratio:.2f} | {add_b:+.0f} | {add_p:+.0f} | {note} |")
    verdicts.append(f"- {key[0]}, {key[1]} client(s): proxy TPS ≥ PgBouncer TPS: **{'met' if ratio >= 1 else 'NOT met'}** ({ratio:.2f}×)")
    if key[1] == 1:
        verdicts.append(f"- {key[0]}, 1 client: proxy added latency ≤ 35 µs: **{'met' if add_p <= 35 else 'NOT met'}** ({add_p:+.0f} µs)")
print("\n".join(out))
print()
print("Targets:")
print()
print("\n".join(verdicts))
print()
print("All rounds: TPS per round; odd rounds ran direct → pgbouncer → proxy, even rounds the")
print("reverse. In brackets the foreign CPU during the run (other processes' share of the machine,")
print(f"incl. steal); ~~struck~~ rounds had a run above {quiet}% and were not used.")
print()
print("| mode | clients | round | direct | pgbouncer | proxy | proxy/pgbouncer |")
print("|---|---:|---:|---:|---:|---:|---:|")
for key in points:
    for r, d in sorted(runs[key].items()):
        ok = len(d) == 3 and max(v[2] for v in d.values()) <= quiet
        cell = lambda k: (f"{d[k][0]:,.0f} ({d[k][2]}%)" if k in d else "–")
        cells = [cell(k) for k in targets]
        cells.append(f"{d['proxy'][0] / d['pgbouncer'][0]:.2f}" if "proxy" in d and "pgbouncer" in d else "–")
        if not ok:
            cells = [f"~~{c}~~" for c in cells]
        print(f"| {key[0]} | {key[1]} | {r} | " + " | ".join(cells) + " |")
PY
{
    if [[ "$SECTION" == proxy_vs_pgbouncer ]]; then
        echo "## Proxy vs PgBouncer vs direct PostgreSQL (pgbench -S)"
    else
        echo "## Proxy vs PgBouncer vs direct PostgreSQL (pgbench -S): $SECTION"
    fi
    echo
    echo "Run $STARTED with \`$COMMAND\`."
    echo
    echo "Each run: \`pgbench -n -S -M <mode> -c <clients> -j min(clients,2) -T $DURATION\`, database \`$DB\`"
    echo "(scale $SCALE), role \`$ROLE\` with trust authentication everywhere (\`$ROLE.$ORG\` through the proxy),"
    echo "no TLS. PgBouncer $(pgbouncer_version): session mode, default_pool_size 100."
    echo "Proxy: release build, $PROXY_CONFIG, org tier enterprise."
    echo "Build: $(build_note)."
    echo "$ROUNDS clean rounds per point (foreign CPU ≤ $QUIET_PCT % in each run; see below), the order of"
    echo "the targets reversed every other round. proxy/pgbouncer is the median of the rounds' own ratios;"
    echo "added latency is the median of the rounds' (latency average − direct latency average) × 1000,"
    echo "from pgbench's \`latency average\` (printed with 1 µs resolution). TPS columns: median per target."
    echo
    echo "Machine: $MACHINE, at end: $LOAD_END. pgbench, PostgreSQL, PgBouncer and the proxy share these cores, so"
    echo "absolute numbers are low and a proxy's CPU use shows up directly as lost throughput."
    echo
    cat "$WORK/tables.md"
} >"$REPORT"

cat "$REPORT"
if [[ "$WRITE_RESULTS" == 1 ]]; then
    replace_section "$SECTION" "$REPORT"
    log "section $SECTION written to $RESULTS_FILE"
fi
