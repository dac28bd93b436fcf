#!/usr/bin/env bash
# What a suspended organization costs the gateway: RSS and CPU time of an
# idle `dynabase serve` holding COUNTS suspended organizations (target:
# nothing per org but its record), and the processes left of suspended
# clusters (target: 0). Replaces the `suspended_orgs` section of
# load-tests/RESULTS.md; all counts are measured side by side in one run.
#
#   cargo build --release --bin dynabase
#   load-tests/suspended_orgs.sh     # COUNTS="0 1000 10000" IDLE=60 PROFILE=release
#
# For each count, on a fresh embedded store:
#  1. a gateway creates the organizations through the admin API
#     (POST /admin/orgs, PUT /admin/orgs/{id}/compute, POST …/suspend), FREE
#     tier. The first REAL_CLUSTERS of them are real PostgreSQL 15 clusters
#     (initdb here, started before the run) on the `local` driver, so their
#     suspend really stops them; the others use the `command` driver with
#     `true` for both steps (a platform call that costs the gateway nothing
#     to hold).
#  2. that gateway is stopped and a fresh one started on the same store, as
#     after a deploy: what it holds is what N suspended orgs cost, not the
#     left-overs of creating them. After SETTLE seconds its RSS (VmRSS) and
#     CPU time (utime + stime, /proc/PID/stat) are read, again after IDLE
#     seconds without a client (the scale-to-zero tick still runs every 10 s
#     and lists every org), with the RSS sampled every 5 s in between.
#  3. the postgres processes of the suspended clusters are counted (the
#     postmaster, found by its data directory, and its children).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PROFILE="${PROFILE:-release}"
GIVEN_BIN="${DYNABASE_BIN:-}"
DYNABASE_BIN="${DYNABASE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/dynabase}"
source "$HERE/lib.sh"

COUNTS="${COUNTS:-0 1000 10000}"
IDLE="${IDLE:-60}"
SETTLE="${SETTLE:-5}"
REAL_CLUSTERS="${REAL_CLUSTERS:-3}"
WRITE_RESULTS="${WRITE_RESULTS:-1}"
SECTION="${SECTION:-suspended_orgs}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
require_tools "$PG_BIN/initdb" "$PG_BIN/pg_ctl" python3 curl setpriv
[[ -x "$DYNABASE_BIN" ]] || die "no binary at $DYNABASE_BIN (cargo build --$PROFILE --bin dynabase)"

make_workdir suspended-orgs
as_pg() { if [[ "$(id -u)" -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
stop_clusters() {
    local i
    for ((i = 0; i < REAL_CLUSTERS; i++)); do
        as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg$i/data" -m fast -w stop >/dev/null 2>&1 || true
    done
}
trap 'finish_run $? stop_clusters' EXIT
trap 'exit 130' INT TERM

# --- the real clusters --------------------------------------------------------------
# pg_ctl as the postgres OS user: the `local` driver's pg_bin is this wrapper.
mkdir -p "$WORK/bin"
cat >"$WORK/bin/pg_ctl" <<SH
#!/bin/sh
cd /
if [ "\$(id -u)" -eq 0 ]; then exec runuser -u postgres -- $PG_BIN/pg_ctl "\$@"; fi
exec $PG_BIN/pg_ctl "\$@"
SH
chmod 755 "$WORK/bin/pg_ctl"
PORTS=()
for ((i = 0; i < REAL_CLUSTERS; i++)); do
    mkdir -p "$WORK/pg$i"
    [[ "$(id -u)" -ne 0 ]] || chown postgres "$WORK/pg$i"
    as_pg "$PG_BIN/initdb" -D "$WORK/pg$i/data" -U postgres --auth=trust --no-sync -E UTF8 >"$WORK/pg$i/initdb.log" 2>&1 \
        || { cat "$WORK/pg$i/initdb.log" >&2; die "initdb failed"; }
    PORTS+=("$(free_port)")
    printf "\nport = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nshared_buffers = 16MB\nfsync = off\n" \
        "${PORTS[$i]}" "$WORK/pg$i" >>"$WORK/pg$i/data/postgresql.conf"
done
start_clusters() { # HOW_MANY
    local i
    for ((i = 0; i < $1; i++)); do
        "$WORK/bin/pg_ctl" -D "$WORK/pg$i/data" status >/dev/null 2>&1 \
            || "$WORK/bin/pg_ctl" -D "$WORK/pg$i/data" -l "$WORK/pg$i/postgres.log" -w start >/dev/null
    done
}

# postgres processes of the real clusters: each postmaster (its command line
# names the data directory) and all its descendants.
cluster_processes() {
    python3 - "$WORK" <<'PY'
import os, sys
work = sys.argv[1]
procs = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        continue
    procs[int(pid)] = (ppid, cmd)
found = {p for p, (_, cmd) in procs.items() if "postgres" in cmd and f"{work}/pg" in cmd}
grew = True
while grew:
    kids = {p for p, (pp, _) in procs.items() if pp in found} - found
    found |= kids
    grew = bool(kids)
print(len(found))
PY
}

# create_orgs COUNT: through the admin API, keep-alive, in order.
create_orgs() {
    python3 - "$1" "$PROXY_HTTP_PORT" "$ADMIN_TOKEN" "$WORK/bin" "$WORK" "${PORTS[@]}" <<'PY'
import http.client, json, sys
count, port, token, pg_bin, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ports = [int(p) for p in sys.argv[6:]]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
def call(method, path, body):
    conn.request(method, path, json.dumps(body),
                 {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status >= 300:
        sys.exit(f"{method} {path}: HTTP {r.status} {data[:300]!r}")
    return json.loads(data or b"null")
for n in range(count):
    org = f"idle-{n:05d}"
    real = n < len(ports)
    upstream = f"127.0.0.1:{ports[n]}" if real else "127.0.0.1:9"
    call("POST", "/admin/orgs", {"id": org, "name": org, "tier": "free", "upstream": upstream})
    spec = ({"driver": "local", "data_dir": f"{work}/pg{n}/data", "port": ports[n], "pg_bin": pg_bin}
            if real else {"driver": "command", "suspend": "true", "wake": "true", "timeout_ms": 10000})
    call("PUT", f"/admin/orgs/{org}/compute", spec)
    state = call("POST", f"/admin/orgs/{org}/suspend", {})
    if state.get("state") != "suspended":
        sys.exit(f"{org}: {state}")
PY
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
TICK_HZ="$(getconf CLK_TCK)"

rows="$WORK/rows"
: >"$rows"
for count in $COUNTS; do
    dir="$WORK/n$count"
    mkdir -p "$dir"
    # Only the clusters this count's organizations own run (and get suspended).
    real=$((count < REAL_CLUSTERS ? count : REAL_CLUSTERS))
    stop_clusters
    start_clusters "$real"
    start_proxy "$dir"
    started=$SECONDS
    create_orgs "$count"
    created_s=$((SECONDS - started))
    creator_rss="$(vmrss_kib "$PROXY_PID")"
    stop_pid "$PROXY_PID" 25
    log "$count orgs created and suspended in ${created_s}s; restarting on the same store"

    start_proxy "$dir"
    sleep "$SETTLE"
    rss0="$(vmrss_kib "$PROXY_PID")"
    cpu0="$(cpu_ticks "$PROXY_PID")"
    peak="$rss0"
    series="$((rss0 / 1024))"
    for ((t = 0; t < IDLE; t += 5)); do
        sleep 5
        r="$(vmrss_kib "$PROXY_PID")"
        ((r > peak)) && peak="$r"
        series="$series,$((r / 1024))"
    done
    rss1="$(vmrss_kib "$PROXY_PID")"
    cpu1="$(cpu_ticks "$PROXY_PID")"
    hwm="$(hwm_kib "$PROXY_PID")"
    threads="$(awk '/^Threads:/ {print $2}' "/proc/$PROXY_PID/status")"
    pg_procs="$(cluster_processes)"
    # After the minute (its requests cost CPU): the fresh gateway reads the
    # organizations as suspended.
    if ((count > 0)); then
        state="$(curl -s -H "Authorization: Bearer $ADMIN_TOKEN" \
            "http://127.0.0.1:$PROXY_HTTP_PORT/admin/orgs/idle-00000/compute" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')"
        [[ "$state" == suspended ]] || die "idle-00000 reads as $state after the restart"
    fi
    store_kib="$(du -sk "$dir/data" | cut -f1)"
    stop_pid "$PROXY_PID" 25
    PROXY_PID=""
    echo "$count $rss0 $rss1 $peak $hwm $((cpu1 - cpu0)) $threads $real $pg_procs $created_s $creator_rss $store_kib $series" >>"$rows"
    log "N=$count: RSS ${rss0}→${rss1} KiB, CPU $((cpu1 - cpu0)) ticks over ${IDLE}s, $pg_procs postgres processes of $real suspended clusters"
done

report="$WORK/report.md"
python3 - "$rows" "$IDLE" "$TICK_HZ" >"$WORK/table.md" <<'PY'
import sys
rows = []
series = {}
for line in open(sys.argv[1]):
    if line.strip():
        *nums, samples = line.split()
        rows.append(list(map(int, nums)))
        series[rows[-1][0]] = samples
idle, hz = int(sys.argv[2]), int(sys.argv[3])
base = next((r for r in rows if r[0] == 0), None)
print("| suspended orgs | RSS after start (MiB) | RSS after the idle period (MiB) | max RSS sampled (MiB) | CPU over the idle period (s) | CPU (% of a core) | threads | real clusters suspended | their postgres processes | RSS per org vs 0 orgs | store on disk (MiB) | creating them (s) |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n, rss0, rss1, peak, hwm, cpu, threads, real, procs, created, creator, store in rows:
    per = "—" if base is None or n == 0 else f"{(rss1 - base[2]) * 1024 / n:,.0f} B"
    secs = cpu / hz
    print(f"| {n:,} | {rss0/1024:.1f} | {rss1/1024:.1f} | {peak/1024:.1f} | {secs:.2f} | {100*secs/idle:.2f} | {threads} | {real} | {procs} | {per} | {store/1024:.1f} | {created} |")
print()
print("RSS every 5 s through the idle period (MiB, from the first reading):")
print()
for n, samples in series.items():
    print(f"- {n:,} orgs: {samples.replace(',', ' ')}")
PY
{
    echo "## suspended_orgs"
    echo
    echo "\`COUNTS=\"$COUNTS\" IDLE=$IDLE $([[ -n "$GIVEN_BIN" ]] && echo "DYNABASE_BIN=$GIVEN_BIN" || echo "PROFILE=$PROFILE") load-tests/suspended_orgs.sh\`, $(date -u +%Y-%m-%dT%H:%MZ); $(build_note)."
    echo "$(machine_note 'at the end')."
    echo
    echo "A fresh gateway (embedded store, default configuration: scale-to-zero tick every 10 s) restarted on a store"
    echo "holding N suspended FREE organizations, no client connected; RSS read ${SETTLE} s after start and after ${IDLE} s idle."
    echo "The first $REAL_CLUSTERS organizations are real PostgreSQL 15 clusters on the \`local\` driver, stopped by their suspend."
    echo
    cat "$WORK/table.md"
} >"$report"
cat "$report"
if [[ "$WRITE_RESULTS" == 1 ]]; then
    replace_section "$SECTION" "$report"
    log "section $SECTION written to $RESULTS_FILE"
fi
