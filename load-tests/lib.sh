# Shared helpers for the load-test scripts. Source it; do not run it.
# shellcheck shell=bash

LT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$LT_DIR/.." && pwd)"
DYNABASE_BIN="${DYNABASE_BIN:-$REPO_ROOT/target/release/dynabase}"
RESULTS_FILE="${RESULTS_FILE:-$LT_DIR/RESULTS.md}"
ADMIN_TOKEN="${ADMIN_TOKEN:-loadtest-token}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# A TCP port nobody listens on right now (the kernel picks it).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

port_open() { # host port
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

wait_port() { # host port seconds what
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        port_open "$1" "$2" && return 0
        sleep 0.1
    done
    die "$4 did not open $1:$2 within $3 s"
}

vmrss_kib() { # pid
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# require_tools TOOL... -> dies naming the first one not found.
require_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool not found"
    done
}

# make_workdir NAME -> WORK: a fresh directory under /tmp that PgBouncer and
# PostgreSQL (run as the postgres user) can read; PGB_PID and PROXY_PID reset.
make_workdir() {
    WORK="$(mktemp -d "/tmp/$1.XXXXXX")"
    chmod 755 "$WORK"
    PGB_PID=""
    PROXY_PID=""
}

# finish_run RC [CMD...]: stops the proxy and PgBouncer the script started,
# runs CMD (more teardown) if given, then removes WORK, or keeps it (and says
# so) when the script failed.
finish_run() {
    local rc="$1"
    shift
    stop_pid "$PROXY_PID" 25
    stop_pid "$PGB_PID" 5
    if [[ $# -gt 0 ]]; then "$@"; fi
    if [[ $rc -ne 0 ]]; then
        log "failed (exit $rc); logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}

# start_proxy WORKDIR -> sets PROXY_PID, PROXY_PORT, PROXY_HTTP_PORT.
# The release binary with its default configuration (worker_threads = one per
# core); an embedded store in WORKDIR; logs in WORKDIR/dynabase.log.
start_proxy() {
    local dir="$1"
    [[ -x "$DYNABASE_BIN" ]] || die "no release binary at $DYNABASE_BIN (cargo build --release --bin dynabase)"
    PROXY_PORT="$(free_port)"
    PROXY_HTTP_PORT="$(free_port)"
    mkdir -p "$dir/data"
    (
        cd "$REPO_ROOT"
        DYNABASE_CONFIG_DIR="${DYNABASE_CONFIG_DIR:-$REPO_ROOT/config}" \
            DYNABASE_ADMIN_TOKEN="$ADMIN_TOKEN" \
            PORT="$PROXY_HTTP_PORT" \
            DYNABASE__HTTP__HOST=127.0.0.1 \
            DYNABASE__PROXY__HOST=127.0.0.1 \
            DYNABASE__PROXY__PORT="$PROXY_PORT" \
            DYNABASE__STORE__DATA_DIR="$dir/data" \
            RUST_LOG=warn \
            exec "$DYNABASE_BIN" serve
    ) >"$dir/dynabase.log" 2>&1 &
    PROXY_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        grep -q 'PostgreSQL proxy listening' "$dir/dynabase.log" 2>/dev/null && break
        kill -0 "$PROXY_PID" 2>/dev/null || { cat "$dir/dynabase.log" >&2; die "dynabase exited during startup"; }
        sleep 0.1
    done
    wait_port 127.0.0.1 "$PROXY_PORT" 10 "dynabase proxy"
    wait_port 127.0.0.1 "$PROXY_HTTP_PORT" 10 "dynabase HTTP API"
    log "dynabase pid $PROXY_PID: proxy 127.0.0.1:$PROXY_PORT, HTTP 127.0.0.1:$PROXY_HTTP_PORT"
}

create_org() { # id tier upstream
    local code
    code="$(curl -s -o "${WORK:-/tmp}/org-$1.json" -w '%{http_code}' -XPOST "http://127.0.0.1:$PROXY_HTTP_PORT/admin/orgs" \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d "{\"id\":\"$1\",\"name\":\"$1\",\"tier\":\"$2\",\"upstream\":\"$3\"}")"
    [[ "$code" == 2* ]] || { cat "${WORK:-/tmp}/org-$1.json" >&2; die "creating org $1 failed: HTTP $code"; }
    log "org $1 ($2) -> $3"
}

# Stop a process we started: TERM, then KILL after a grace period.
stop_pid() { # pid [grace seconds]
    local pid="$1" grace="${2:-5}" i
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# machine_note -> one line about the box the numbers come from.
machine_note() {
    local model
    model="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    printf '%s cores (%s), %s GiB RAM, kernel %s; load average (1/5/15 min) %s: %s' \
        "$(nproc)" "${model:-unknown CPU}" \
        "$(awk '/^MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)" \
        "$(uname -r)" "${1:-now}" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

# replace_section NAME FILE_WITH_BODY: puts the body between
# <!-- BEGIN NAME --> and <!-- END NAME --> in RESULTS.md (appended if absent).
replace_section() {
    python3 - "$RESULTS_FILE" "$1" "$2" <<'PY'
import os, sys
path, name, body_path = sys.argv[1:4]
body = open(body_path).read().rstrip("\n") + "\n"
begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
block = f"{begin}\n{body}{end}\n"
text = open(path).read() if os.path.exists(path) else "# Load-test results\n\nWritten by the scripts in this directory; see README.md.\n"
if begin in text and end in text:
    pre, rest = text.split(begin, 1)
    _, post = rest.split(end, 1)
    post = post.lstrip("\n")
    text = pre + block + ("\n" + post if post.strip() else "")
else:
    text = text.rstrip("\n") + "\n\n" + block
open(path, "w").write(text)
PY
}

# build_note -> which binary and source the numbers come from (BUILD_NOTE overrides).
build_note() {
    if [[ -n "${BUILD_NOTE:-}" ]]; then
        printf '%s' "$BUILD_NOTE"
        return
    fi
    local commit dirty
    commit="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    dirty="$(git -C "$REPO_ROOT" status --porcelain -- src actors Cargo.toml Cargo.lock 2>/dev/null | wc -l)"
    printf 'binary %s built %s from commit %s' "$DYNABASE_BIN" \
        "$(date -u -r "$DYNABASE_BIN" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo '?')" "$commit"
    [[ "$dirty" -eq 0 ]] || printf ' (working tree had %s uncommitted changes under src/, actors/, Cargo.*)' "$dirty"
}

# ensure_bench_db HOST PORT ROLE DB SCALE: database DB owned by ROLE, created
# by the superuser ($DYNABASE_TEST_PG_SUPERUSER/_PASSWORD, default
# postgres/postgres) when missing, and pgbench-initialized at SCALE unless it
# already is (pgbench -S only reads, so the data never changes).
ensure_bench_db() {
    local host="$1" port="$2" role="$3" db="$4" scale="$5" have
    local su="${DYNABASE_TEST_PG_SUPERUSER:-postgres}" supw="${DYNABASE_TEST_PG_PASSWORD:-postgres}"
    if [[ "$(PGPASSWORD="$supw" psql -X -At -h "$host" -p "$port" -U "$su" \
        -c "SELECT 1 FROM pg_database WHERE datname = '$db'" postgres)" != 1 ]]; then
        log "creating database $db owned by $role"
        PGPASSWORD="$supw" psql -X -q -v ON_ERROR_STOP=1 -h "$host" -p "$port" -U "$su" \
            -c "CREATE DATABASE $db OWNER $role" postgres
    fi
    have="$(psql -X -At -h "$host" -p "$port" -U "$role" -c 'SELECT count(*) FROM pgbench_branches' "$db" 2>/dev/null || true)"
    if [[ "$have" != "$scale" ]]; then
        log "pgbench -i -s $scale into $db (as $role)"
        pgbench -i -q -s "$scale" -h "$host" -p "$port" -U "$role" "$db" >"${WORK:-/tmp}/pgbench-init.log" 2>&1 \
            || { cat "${WORK:-/tmp}/pgbench-init.log" >&2; die "pgbench -i failed"; }
    else
        log "database $db already initialized at scale $scale"
    fi
}

# start_pgbouncer DIR UPSTREAM_HOST UPSTREAM_PORT ROLE DB MAX_CLIENT_CONN POOL_SIZE
#   -> sets PGB_PID, PGB_PORT. Session mode, trust auth (ROLE in the auth
#   file), listening on 127.0.0.1 only. Run as root, it switches to the
#   postgres user with -u (PgBouncer refuses root), so $! is PgBouncer itself.
start_pgbouncer() {
    local dir="$1" uhost="$2" uport="$3" role="$4" db="$5" maxc="$6" pool="$7" user=""
    PGB_PORT="$(free_port)"
    mkdir -p "$dir"
    cat >"$dir/pgbouncer.ini" <<INI
[databases]
$db = host=$uhost port=$uport dbname=$db

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = session
max_client_conn = $maxc
default_pool_size = $pool
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
INI
    printf '"%s" ""\n' "$role" >"$dir/userlist.txt"
    if [[ "$(id -u)" -eq 0 ]]; then
        user=postgres
        chown -R "$user" "$dir"
    fi
    /usr/sbin/pgbouncer ${user:+-u "$user"} "$dir/pgbouncer.ini" >"$dir/stdout.log" 2>&1 &
    PGB_PID=$!
    wait_port 127.0.0.1 "$PGB_PORT" 10 pgbouncer
    kill -0 "$PGB_PID" 2>/dev/null || { cat "$dir/"*.log >&2; die "pgbouncer exited"; }
    psql -X -At -h 127.0.0.1 -p "$PGB_PORT" -U "$role" -c 'SELECT 1' "$db" >/dev/null \
        || die "cannot connect through pgbouncer"
    log "pgbouncer $(pgbouncer_version) pid $PGB_PID on 127.0.0.1:$PGB_PORT (session mode, pool $pool)"
}

pgbouncer_version() {
    /usr/sbin/pgbouncer --version | head -1 | cut -d' ' -f2
}

# busy_pct [SECONDS]: share of all CPUs busy (not idle/iowait) over SECONDS
# (default 1), from /proc/stat. Between benchmark runs this is other people's
# load.
busy_pct() {
    local a b
    a="$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6; exit}' /proc/stat)"
    sleep "${1:-1}"
    b="$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6; exit}' /proc/stat)"
    awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " ");
        busy = y[1] - x[1]; idle = y[2] - x[2];
        total = busy + idle; if (total <= 0) total = 1;
        printf "%.0f\n", 100 * busy / total}'
}

# wait_quiet MAX_BUSY_PCT MAX_WAIT_SECONDS: waits until the machine's
# background CPU use is at most MAX_BUSY_PCT (checked each second), at most
# MAX_WAIT_SECONDS; prints the last busy % seen.
wait_quiet() {
    local max="$1" waited=0 busy
    busy="$(busy_pct 1)"
    while ((busy > max && waited < $2)); do
        busy="$(busy_pct 1)"
        waited=$((waited + 1))
    done
    ((waited == 0)) || log "waited ${waited}s for background CPU use to drop (now ${busy}%)"
    echo "$busy"
}

# cpu_ticks PID... [-- POSTMASTER_PID]: prints "<machine busy ticks> <our ticks>".
# Machine busy = user+nice+system+irq+softirq+steal over all CPUs (/proc/stat);
# ours = utime+stime of each PID, plus for the postmaster its own, its live
# children's and its reaped children's (cutime+cstime) time, so backends that
# came and went during a run are counted. Clock ticks (USER_HZ).
cpu_ticks() {
    python3 - "$@" <<'PY'
import os, sys
args = sys.argv[1:]
pm = None
if "--" in args:
    i = args.index("--")
    pm = int(args[i + 1]) if len(args) > i + 1 and args[i + 1] else None
    args = args[:i]
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    f = s[s.rindex(")") + 2:].split()
    # after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return int(f[1]), int(f[11]), int(f[12]), int(f[13]), int(f[14])
with open("/proc/stat") as f:
    c = [int(x) for x in f.readline().split()[1:]]
busy = c[0] + c[1] + c[2] + c[5] + c[6] + c[7]
ours = 0
for p in args:
    if p:
        st = stat(p)
        if st:
            ours += st[1] + st[2]
if pm:
    st = stat(pm)
    if st:
        ours += st[1] + st[2] + st[3] + st[4]
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = stat(d)
            if st and st[0] == pm:
                ours += st[1] + st[2]
print(busy, ours)
PY
}

# listener_pid PORT: the pid listening on 127.0.0.1:PORT (needs ss and the
# right to see it), empty when unknown.
listener_pid() {
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -nE 's/.*pid=([0-9]+).*/\1/p' | head -1
}

# The shared PostgreSQL and the `bench` database the pgbench scripts use:
# PG_HOST, PG_PORT, ROLE (trust authentication), DB and ORG. No TLS anywhere,
# so every target gets the same wire, and no PG* variable leaks into pgbench.
bench_settings() {
    PG_HOST=127.0.0.1
    PG_PORT="${DYNABASE_TEST_PG_PORT:-5432}"
    ROLE="${DYNABASE_TEST_PG_TRUST_USER:-trust_user}"
    DB=bench
    ORG=bench
    export PGSSLMODE=disable
    unset PGPASSWORD PGUSER PGDATABASE PGHOST PGPORT
}

# After bench_settings and make_workdir: the bench database (pgbench scale
# $SCALE), PgBouncer in session mode and the proxy with org $ORG (enterprise)
# in front of it.
start_bench_targets() {
    ensure_bench_db "$PG_HOST" "$PG_PORT" "$ROLE" "$DB" "$SCALE"
    start_pgbouncer "$WORK/pgbouncer" "$PG_HOST" "$PG_PORT" "$ROLE" "$DB" 1000 100
    start_proxy "$WORK/dynabase"
    create_org "$ORG" enterprise "$PG_HOST:$PG_PORT"
}
