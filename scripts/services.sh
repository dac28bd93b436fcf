#!/usr/bin/env bash
# Local backing services for Dynabase tests and benchmarks.
#
#   scripts/services.sh [start|stop|status|env]     (default: start)
#
# Services (all bound to 127.0.0.1, state under $DYNABASE_SERVICES_DIR,
# default <repo>/.services):
#   * PostgreSQL 15  – own data dir (never the Debian 'main' cluster),
#                      port $PGPORT_DYNABASE (default 5432), max_connections=300.
#                      Roles: postgres/postgres (superuser, SCRAM over TCP),
#                      trust_user (trust from 127.0.0.1), md5_user/md5pass (md5).
#                      Local unix socket: trust for everybody.
#   * Redis          – 127.0.0.1:$REDIS_PORT_DYNABASE (default 6379), no persistence.
#   * MongoDB wire   – 127.0.0.1:$MONGO_PORT_DYNABASE (default 27017): `mongod` when
#                      on PATH, otherwise FerretDB v1.24.2 (SQLite backend), built
#                      from source once and cached in .services/bin/ferretdb.
#   * stripe-mock    – Stripe's API mock, http://127.0.0.1:$STRIPE_MOCK_PORT_DYNABASE
#                      (default 12111; its HTTPS listener goes to a free loopback
#                      port), v0.203.0 installed with `go install` once and cached
#                      in .services/bin/stripe-mock. Exported as STRIPE_MOCK_URL.
#   * Python venvs     – .services/browser (Selenium, the browser test) and
#                      .services/schemathesis (the API check, scripts/schemathesis.sh).
#
# `start` is idempotent: when everything already runs it only verifies and exits 0.
# Missing system packages are installed with apt-get (needs root or sudo).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SD="${DYNABASE_SERVICES_DIR:-$REPO_ROOT/.services}"

PG_VERSION_MAJOR=15
PG_BIN="/usr/lib/postgresql/$PG_VERSION_MAJOR/bin"
PG_PORT="${PGPORT_DYNABASE:-5432}"
REDIS_PORT="${REDIS_PORT_DYNABASE:-6379}"
MONGO_PORT="${MONGO_PORT_DYNABASE:-27017}"
STRIPE_MOCK_PORT="${STRIPE_MOCK_PORT_DYNABASE:-12111}"
HOST=127.0.0.1
START_TIMEOUT="${DYNABASE_SERVICES_TIMEOUT:-60}"

FERRETDB_VERSION=v1.24.2
FERRETDB_MODULE=github.com/FerretDB/FerretDB
GO_MIN_MINOR=24                 # FerretDB v1.24.2 needs go >= 1.24
GO_FALLBACK_TOOLCHAIN=go1.24.3  # its go.mod `toolchain` line

# Serves the OpenAPI spec of the Stripe API version async-stripe 1.0.0-rc.10
# targets (2026-09-30) closely enough for invoice items; needs go >= 1.22.
STRIPE_MOCK_VERSION=v0.203.0
STRIPE_MOCK_MODULE=github.com/stripe/stripe-mock

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

show_log_tail() { # file
    if [[ -f "$1" ]]; then
        printf '[services] ---- last lines of %s ----\n' "$1" >&2
        tail -n 40 "$1" >&2 || true
        printf '[services] ---- end of %s ----\n' "$1" >&2
    else
        printf '[services] (no log file at %s)\n' "$1" >&2
    fi
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# True when something accepts TCP connections on host:port.
port_open() { # host port
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

pid_alive() { # pid — alive and not a zombie
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
    local state
    state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)"
    [[ "$state" != Z && "$state" != X ]]
}

read_pidfile() { # file -> pid (or empty)
    local p=""
    [[ -f "$1" ]] && p="$(head -n1 "$1" 2>/dev/null | tr -dc '0-9')"
    printf '%s' "$p"
}

# Is <pid> alive and is its executable name one of the given names?
pid_is() { # pid name...
    local pid="$1" comm exe
    shift
    pid_alive "$pid" || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    exe="$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null || true)")"
    local n
    for n in "$@"; do
        [[ "$comm" == "$n"* || "$exe" == "$n" ]] && return 0
    done
    return 1
}

# Wait until "$@" succeeds or timeout (seconds) passes.
wait_until() { # timeout cmd...
    local t="$1" deadline
    shift
    deadline=$(( $(date +%s) + t ))
    while true; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        (( $(date +%s) >= deadline )) && return 1
        sleep 0.2
    done
}

stop_pid() { # pid name  — SIGTERM, wait, then SIGKILL
    local pid="$1" name="$2"
    pid_alive "$pid" || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    log "$name (pid $pid) did not exit after SIGTERM, sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
    sleep 0.2
}

# ---------------------------------------------------------------------------
# Package installation
# ---------------------------------------------------------------------------
APT_UPDATED=0
POLICY_RC_CREATED=0
cleanup_policy_rc() {
    if [[ "$POLICY_RC_CREATED" == 1 ]]; then
        run_root rm -f /usr/sbin/policy-rc.d || true
        POLICY_RC_CREATED=0
    fi
}

run_root() {
    if is_root; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else die "need root (or passwordless sudo) to run: $*"
    fi
}

apt_install() { # packages...
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; please install manually: $*"
    # Never let the Debian packages create/start the default 'main' cluster or
    # start redis/pgbouncer system services: we run our own instances.
    if [[ ! -f /etc/postgresql-common/createcluster.d/dynabase-no-main-cluster.conf ]]; then
        run_root mkdir -p /etc/postgresql-common/createcluster.d
        echo 'create_main_cluster = false' |
            run_root tee /etc/postgresql-common/createcluster.d/dynabase-no-main-cluster.conf >/dev/null
    fi
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, created by dynabase scripts/services.sh\nexit 101\n' |
            run_root tee /usr/sbin/policy-rc.d >/dev/null
        run_root chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
        trap cleanup_policy_rc EXIT
    fi
    if [[ "$APT_UPDATED" == 0 ]]; then
        log "apt-get update"
        run_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    run_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
    cleanup_policy_rc
}

ensure_packages() {
    local -a pkgs=()
    [[ -x "$PG_BIN/postgres" && -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" ]] || pkgs+=("postgresql-$PG_VERSION_MAJOR")
    { command -v psql && command -v pgbench && command -v pg_isready; } >/dev/null 2>&1 \
        || pkgs+=(postgresql-client)
    command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] || pkgs+=(pgbouncer)
    command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || pkgs+=(redis-tools)
    # promtool checks and unit-tests the alert rules (deploy/prometheus);
    # Prometheus itself evaluates the dashboards' queries (tests/dashboards.rs).
    command -v promtool >/dev/null 2>&1 || pkgs+=(prometheus)
    # Headless Chromium drives the customer dashboard (tests/dashboard_browser.rs).
    { command -v chromium && command -v chromedriver; } >/dev/null 2>&1 \
        || pkgs+=(chromium chromium-driver fonts-dejavu-core)
    if ((${#pkgs[@]})); then
        apt_install "${pkgs[@]}"
    fi
    [[ -x "$PG_BIN/postgres" ]] || die "PostgreSQL $PG_VERSION_MAJOR server binaries missing in $PG_BIN after install"
    command -v redis-server >/dev/null 2>&1 || die "redis-server missing after install"
    command -v redis-cli >/dev/null 2>&1 || die "redis-cli missing after install"
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------
PG_USER=""          # OS user the server runs as
PG_BASE=""          # directory holding pg/, pg-run/ and pg.log
PGDATA_DIR=""
PG_SOCK_DIR=""
PG_LOG=""

as_pg() { # run a command as the postgres OS user (when we are root)
    if [[ -n "$PG_USER" && "$PG_USER" != "$(id -un)" ]]; then
        (cd / && runuser -u "$PG_USER" -- "$@")
    else
        "$@"
    fi
}

pg_paths() {
    if is_root; then
        PG_USER=postgres
        if ! id postgres >/dev/null 2>&1; then
            # normally created by the postgresql-common package
            useradd --system --home-dir /var/lib/postgresql --shell /bin/bash --user-group postgres
        fi
    else
        PG_USER="$(id -un)"
    fi
    PG_BASE="$SD"
    # The postgres user must be able to reach the state dir; fall back to a
    # private dir under /var/tmp when the repo lives somewhere it can't (e.g. /root).
    if is_root && ! runuser -u postgres -- test -x "$SD" 2>/dev/null; then
        local key
        key="$(printf '%s' "$SD" | cksum | cut -d' ' -f1)"
        PG_BASE="/var/tmp/dynabase-services-$key"
        mkdir -p "$PG_BASE"
        chmod 755 "$PG_BASE"
        ln -sfn "$PG_BASE/pg.log" "$SD/pg.log" 2>/dev/null || true
    fi
    PGDATA_DIR="$PG_BASE/pg"
    PG_SOCK_DIR="$PG_BASE/pg-run"
    PG_LOG="$PG_BASE/pg.log"
    # unix socket paths are limited to ~107 bytes
    if (( ${#PG_SOCK_DIR} + 20 > 100 )); then
        PG_SOCK_DIR="/tmp/dynabase-pg-run-$(printf '%s' "$SD" | cksum | cut -d' ' -f1)"
    fi
}

pg_pid() { # pid of our postmaster, if running
    local pid
    pid="$(read_pidfile "$PGDATA_DIR/postmaster.pid")"
    if pid_is "$pid" postgres postmaster; then printf '%s' "$pid"; fi
}

pg_running_port() { # port from our postmaster.pid (line 4)
    sed -n 4p "$PGDATA_DIR/postmaster.pid" 2>/dev/null || true
}

pg_desired_conf() {
    cat <<EOF
# Managed by scripts/services.sh — rewritten on every start.
listen_addresses = '$HOST'
port = $PG_PORT
max_connections = 300
unix_socket_directories = '$PG_SOCK_DIR'
password_encryption = 'scram-sha-256'
logging_collector = off
log_min_messages = warning
log_connections = off
log_disconnections = off
EOF
}

pg_desired_hba() {
    cat <<'EOF'
# Managed by scripts/services.sh — rewritten on every start.
# TYPE  DATABASE     USER        ADDRESS        METHOD
local   all          all                        trust
local   replication  all                        trust
host    all          trust_user  127.0.0.1/32   trust
host    all          md5_user    127.0.0.1/32   md5
host    all          all         127.0.0.1/32   scram-sha-256
host    replication  all         127.0.0.1/32   scram-sha-256
EOF
}

pg_psql_sock() { # psql over the unix socket (trust) as postgres
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK_DIR" -p "$PG_PORT" -U postgres -d postgres "$@"
}

pg_tcp_check() {
    local out
    out="$(PGPASSWORD=postgres PGCONNECT_TIMEOUT=3 "$PG_BIN/psql" -X -q -At \
        "host=$HOST port=$PG_PORT user=postgres dbname=postgres sslmode=disable" \
        -c 'select 1' 2>&1)" || return 1
    [[ "$out" == 1 ]]
}

pg_provision() {
    pg_psql_sock -f - >/dev/null <<'SQL'
SET password_encryption = 'scram-sha-256';
ALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'postgres';
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'trust_user') THEN
    CREATE ROLE trust_user LOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'md5_user') THEN
    CREATE ROLE md5_user LOGIN;
  END IF;
END
$$;
ALTER ROLE trust_user WITH LOGIN;
SET password_encryption = 'md5';
ALTER ROLE md5_user WITH LOGIN PASSWORD 'md5pass';
RESET password_encryption;
SQL
}

pg_start() {
    pg_paths
    mkdir -p "$SD"
    mkdir -p "$PGDATA_DIR" "$PG_SOCK_DIR"
    if is_root; then
        chown "$PG_USER": "$PGDATA_DIR" "$PG_SOCK_DIR"
        touch "$PG_LOG" && chown "$PG_USER": "$PG_LOG"
    fi
    chmod 700 "$PGDATA_DIR"

    local pid
    pid="$(pg_pid)"

    if [[ ! -f "$PGDATA_DIR/PG_VERSION" ]]; then
        [[ -z "$pid" ]] || die "postgres pid $pid runs on $PGDATA_DIR but PG_VERSION is missing"
        log "initdb $PGDATA_DIR"
        find "$PGDATA_DIR" -mindepth 1 -delete 2>/dev/null || true   # remnants of a failed initdb
        if ! as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres -E UTF8 --locale=C \
                --auth-local=trust --auth-host=scram-sha-256 >"$SD/pg-initdb.log" 2>&1; then
            show_log_tail "$SD/pg-initdb.log"
            die "initdb failed"
        fi
        if ! grep -q "^include_if_exists = 'dynabase.conf'" "$PGDATA_DIR/postgresql.conf"; then
            echo "include_if_exists = 'dynabase.conf'" | as_pg tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null
        fi
    fi

    # (Re)write config; restart/reload a running server when it changed.
    local conf_changed=0 hba_changed=0
    if [[ "$(cat "$PGDATA_DIR/dynabase.conf" 2>/dev/null || true)" != "$(pg_desired_conf)" ]]; then
        pg_desired_conf | as_pg tee "$PGDATA_DIR/dynabase.conf" >/dev/null
        conf_changed=1
    fi
    if [[ "$(cat "$PGDATA_DIR/pg_hba.conf" 2>/dev/null || true)" != "$(pg_desired_hba)" ]]; then
        pg_desired_hba | as_pg tee "$PGDATA_DIR/pg_hba.conf" >/dev/null
        hba_changed=1
    fi

    if { [[ -z "$pid" ]] || [[ "$(pg_running_port)" != "$PG_PORT" ]]; } && port_open "$HOST" "$PG_PORT"; then
        local hint=""
        if command -v pg_lsclusters >/dev/null 2>&1; then
            hint="$(pg_lsclusters 2>/dev/null | awk -v p="$PG_PORT" 'NR>1 && $3==p && $4=="online" {print "  (Debian cluster " $1 "/" $2 " is online on that port: stop it with `pg_ctlcluster " $1 " " $2 " stop`)"}')"
        fi
        die "port $HOST:$PG_PORT is already in use by something that is not our PostgreSQL ($PGDATA_DIR).
Stop that process or choose another port with PGPORT_DYNABASE=<port>.${hint:+
$hint}"
    fi

    if [[ -n "$pid" ]]; then
        if [[ "$conf_changed" == 1 || "$(pg_running_port)" != "$PG_PORT" ]]; then
            log "postgres: configuration changed, restarting"
            as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t "$START_TIMEOUT" stop >/dev/null
            pid=""
        elif [[ "$hba_changed" == 1 ]]; then
            as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" reload >/dev/null
        fi
    fi

    if [[ -z "$pid" ]]; then
        if [[ -f "$PGDATA_DIR/postmaster.pid" ]]; then
            # its pid is dead (or a zombie): stale lock file from a crash/kill -9.
            # postgres still refuses to start if old backends hold its shared memory.
            log "postgres: removing stale $PGDATA_DIR/postmaster.pid"
            rm -f "$PGDATA_DIR/postmaster.pid"
        fi
        local sock_lock="$PG_SOCK_DIR/.s.PGSQL.$PG_PORT.lock"
        if [[ -f "$sock_lock" ]] && ! pid_alive "$(read_pidfile "$sock_lock")"; then
            rm -f "$sock_lock" "$PG_SOCK_DIR/.s.PGSQL.$PG_PORT"
        fi
        log "postgres: starting on $HOST:$PG_PORT (data $PGDATA_DIR)"
        if ! as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t "$START_TIMEOUT" start \
                >"$SD/pg-ctl.log" 2>&1 9>&-; then
            cat "$SD/pg-ctl.log" >&2
            show_log_tail "$PG_LOG"
            die "postgres failed to start within ${START_TIMEOUT}s"
        fi
    fi

    if ! wait_until "$START_TIMEOUT" "$PG_BIN/pg_isready" -q -h "$PG_SOCK_DIR" -p "$PG_PORT" -U postgres -d postgres; then
        show_log_tail "$PG_LOG"
        die "postgres is not ready on socket $PG_SOCK_DIR port $PG_PORT"
    fi
    if ! pg_provision 2>"$SD/pg-provision.err"; then
        cat "$SD/pg-provision.err" >&2
        die "postgres: creating roles failed"
    fi
    if ! wait_until 15 pg_tcp_check; then
        show_log_tail "$PG_LOG"
        die "postgres does not answer 'select 1' on $HOST:$PG_PORT as postgres/postgres"
    fi
    log "postgres: ready on $HOST:$PG_PORT (pid $(pg_pid))"
}

pg_stop() {
    pg_paths
    if [[ -n "$(pg_pid)" ]]; then
        log "postgres: stopping"
        as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null
    else
        log "postgres: not running"
    fi
}

pg_status() {
    pg_paths
    local pid
    pid="$(pg_pid)"
    if [[ -n "$pid" ]]; then
        if pg_tcp_check; then
            echo "postgres: running (pid $pid, $HOST:$(pg_running_port), data $PGDATA_DIR, socket $PG_SOCK_DIR)"
        else
            echo "postgres: running (pid $pid) but NOT answering on $HOST:$PG_PORT"
            return 1
        fi
    elif port_open "$HOST" "$PG_PORT"; then
        echo "postgres: stopped (port $HOST:$PG_PORT is used by a foreign process)"
        return 1
    else
        echo "postgres: stopped"
        return 1
    fi
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------
REDIS_PIDFILE="$SD/redis.pid"
REDIS_LOG="$SD/redis.log"

redis_pid() {
    local pid
    pid="$(read_pidfile "$REDIS_PIDFILE")"
    if pid_is "$pid" redis-server redis-check-rdb; then printf '%s' "$pid"; fi
}

redis_ping() {
    [[ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

redis_start() {
    mkdir -p "$SD/redis"
    if [[ -n "$(redis_pid)" ]]; then
        if redis_ping; then
            log "redis: already running (pid $(redis_pid))"
            return 0
        fi
        if wait_until 10 redis_ping; then return 0; fi
        show_log_tail "$REDIS_LOG"
        die "redis (pid $(redis_pid)) is running but does not answer PING on $HOST:$REDIS_PORT"
    fi
    if port_open "$HOST" "$REDIS_PORT"; then
        die "port $HOST:$REDIS_PORT is already in use by something that is not our redis-server (pidfile $REDIS_PIDFILE).
Stop it (e.g. \`systemctl stop redis-server\`) or set REDIS_PORT_DYNABASE=<port>."
    fi
    rm -f "$REDIS_PIDFILE"
    log "redis: starting on $HOST:$REDIS_PORT"
    if ! redis-server --bind "$HOST" --port "$REDIS_PORT" --daemonize yes \
            --save '' --appendonly no \
            --dir "$SD/redis" --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" \
            --protected-mode yes >>"$REDIS_LOG" 2>&1 9>&-; then
        show_log_tail "$REDIS_LOG"
        die "redis-server failed to start"
    fi
    if ! wait_until "$START_TIMEOUT" redis_ping; then
        show_log_tail "$REDIS_LOG"
        die "redis does not answer PING on $HOST:$REDIS_PORT within ${START_TIMEOUT}s"
    fi
    log "redis: ready on $HOST:$REDIS_PORT (pid $(redis_pid))"
}

redis_stop() {
    local pid
    pid="$(redis_pid)"
    if [[ -n "$pid" ]]; then
        log "redis: stopping (pid $pid)"
        stop_pid "$pid" redis-server
        rm -f "$REDIS_PIDFILE"
    else
        log "redis: not running"
    fi
}

redis_status() {
    local pid
    pid="$(redis_pid)"
    if [[ -n "$pid" ]] && redis_ping; then
        echo "redis: running (pid $pid, $HOST:$REDIS_PORT)"
    elif [[ -n "$pid" ]]; then
        echo "redis: running (pid $pid) but NOT answering PING on $HOST:$REDIS_PORT"
        return 1
    elif port_open "$HOST" "$REDIS_PORT"; then
        echo "redis: stopped (port $HOST:$REDIS_PORT is used by a foreign process)"
        return 1
    else
        echo "redis: stopped"
        return 1
    fi
}

# ---------------------------------------------------------------------------
# MongoDB wire protocol (mongod or FerretDB)
# ---------------------------------------------------------------------------
MONGO_PIDFILE="$SD/mongo.pid"
MONGO_KINDFILE="$SD/mongo.kind"
FERRETDB_LOG="$SD/ferretdb.log"
MONGOD_LOG="$SD/mongod.log"
FERRETDB_BIN="$SD/bin/ferretdb"

mongo_pid() {
    local pid
    pid="$(read_pidfile "$MONGO_PIDFILE")"
    if pid_is "$pid" ferretdb mongod; then printf '%s' "$pid"; fi
}

mongo_log() {
    if [[ "$(cat "$MONGO_KINDFILE" 2>/dev/null || true)" == mongod ]]; then echo "$MONGOD_LOG"; else echo "$FERRETDB_LOG"; fi
}

# Sends a raw OP_MSG {ping: 1, $db: "admin"} and checks for ok: 1.
# Falls back to a TCP connect when python3 is not available.
mongo_ping() {
    if ! command -v python3 >/dev/null 2>&1; then
        port_open "$HOST" "$MONGO_PORT"
        return
    fi
    python3 - "$HOST" "$MONGO_PORT" <<'PY'
import socket, struct, sys

host, port = sys.argv[1], int(sys.argv[2])

def cstr(s):
    return s.encode() + b"\x00"

def bson(elements):
    body = b"".join(elements) + b"\x00"
    return struct.pack("<i", len(body) + 4) + body

doc = bson([
    b"\x10" + cstr("ping") + struct.pack("<i", 1),
    b"\x02" + cstr("$db") + struct.pack("<i", len("admin") + 1) + cstr("admin"),
])
payload = struct.pack("<I", 0) + b"\x00" + doc            # flagBits, section kind 0
msg = struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf

with socket.create_connection((host, port), timeout=3) as s:
    s.sendall(msg)
    header = recv_exact(s, 16)
    length, _req, _resp, opcode = struct.unpack("<iiii", header)
    body = recv_exact(s, length - 16)
if opcode != 2013:
    sys.exit("unexpected opcode %d" % opcode)
# body: flagBits(4) kind(1) document
d = body[5:]
end = struct.unpack("<i", d[:4])[0]
i = 4
ok = None
while i < end - 1:
    t = d[i]; i += 1
    j = d.index(b"\x00", i); name = d[i:j].decode(); i = j + 1
    if t == 0x01:
        v = struct.unpack("<d", d[i:i+8])[0]; i += 8
    elif t == 0x10:
        v = struct.unpack("<i", d[i:i+4])[0]; i += 4
    elif t == 0x12:
        v = struct.unpack("<q", d[i:i+8])[0]; i += 8
    elif t == 0x08:
        v = d[i]; i += 1
    elif t in (0x02, 0x0D, 0x0E):
        n = struct.unpack("<i", d[i:i+4])[0]; i += 4 + n; v = None
    elif t in (0x03, 0x04):
        n = struct.unpack("<i", d[i:i+4])[0]; i += n; v = None
    elif t == 0x07:
        i += 12; v = None
    elif t in (0x09, 0x11):
        i += 8; v = None
    elif t in (0x0A, 0xFF, 0x7F):
        v = None
    else:
        break
    if name == "ok":
        ok = v
        break
sys.exit(0 if ok == 1 else "ping reply without ok:1")
PY
}

go_minor() { # prints minor version of the given go binary (1.x), or 0
    local v
    v="$("$1" env GOVERSION 2>/dev/null || true)"
    if [[ "$v" =~ ^go1\.([0-9]+) ]]; then echo "${BASH_REMATCH[1]}"; else echo 0; fi
}

# Finds a go >= 1.$GO_MIN_MINOR, downloading the official toolchain from the Go
# module proxy (module golang.org/toolchain) when needed. Prints its path.
ensure_go() {
    local g
    for g in "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go "$SD/toolchain/bin/go"; do
        if [[ -n "$g" && -x "$g" ]] && (( $(go_minor "$g") >= GO_MIN_MINOR )); then
            echo "$g"; return 0
        fi
    done
    local arch
    case "$(uname -m)" in
        x86_64) arch=amd64 ;; aarch64|arm64) arch=arm64 ;;
        *) die "no Go >= 1.$GO_MIN_MINOR found and no known toolchain for $(uname -m)" ;;
    esac
    local -a need=()
    command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
    command -v unzip >/dev/null 2>&1 || need+=(unzip)
    ((${#need[@]} == 0)) || apt_install "${need[@]}"
    local proxy="${GOPROXY:-https://proxy.golang.org}"
    proxy="${proxy%%,*}"; proxy="${proxy%%|*}"
    [[ "$proxy" == http* ]] || proxy=https://proxy.golang.org
    local ver="v0.0.1-$GO_FALLBACK_TOOLCHAIN.linux-$arch" tmp
    tmp="$(mktemp -d)"
    log "downloading Go toolchain golang.org/toolchain@$ver from $proxy"
    curl -fsSL --retry 3 -o "$tmp/tc.zip" "$proxy/golang.org/toolchain/@v/$ver.zip" \
        || die "could not download Go toolchain from $proxy"
    unzip -q "$tmp/tc.zip" -d "$tmp/x"
    rm -rf "$SD/toolchain"
    mv "$tmp/x/golang.org/toolchain@$ver" "$SD/toolchain"
    chmod -R u+w "$SD/toolchain"
    chmod +x "$SD/toolchain/bin/"* "$SD/toolchain/pkg/tool/"*/* 2>/dev/null || true
    rm -rf "$tmp"
    echo "$SD/toolchain/bin/go"
}

ferretdb_works() { # binary
    [[ -x "$1" ]] || return 1
    local out
    out="$(timeout 20 "$1" --version 2>&1)" || return 1
    [[ "$out" == *version* ]] || return 1
    out="$(timeout 20 "$1" --help 2>&1)" || return 1
    [[ "$out" == *--sqlite-url* ]]
}

build_ferretdb() {
    local go tmp src
    go="$(ensure_go)"
    log "building FerretDB $FERRETDB_VERSION with $("$go" env GOVERSION) (takes a few minutes the first time)"
    export GOTOOLCHAIN=local GOFLAGS="-buildvcs=false" GO111MODULE=on CGO_ENABLED=0
    src="$(cd / && "$go" mod download -json "$FERRETDB_MODULE@$FERRETDB_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' | head -n1)"
    [[ -n "$src" && -d "$src" ]] || die "go mod download $FERRETDB_MODULE@$FERRETDB_VERSION failed"
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/dynabase-ferretdb-build.XXXXXX")"
    cp -R "$src/." "$tmp/"
    chmod -R u+w "$tmp"
    printf '%s\n' "$FERRETDB_VERSION" >"$tmp/build/version/version.txt"
    mkdir -p "$SD/bin"
    if ! (cd "$tmp" && "$go" build -trimpath -ldflags=-checklinkname=0 \
            -o "$SD/bin/ferretdb.tmp" ./cmd/ferretdb) >"$SD/ferretdb-build.log" 2>&1; then
        show_log_tail "$SD/ferretdb-build.log"
        rm -rf "$tmp"
        die "building FerretDB failed"
    fi
    rm -rf "$tmp"
    mv -f "$SD/bin/ferretdb.tmp" "$FERRETDB_BIN"
    ferretdb_works "$FERRETDB_BIN" || die "freshly built $FERRETDB_BIN does not run: $("$FERRETDB_BIN" --version 2>&1 | head -n3)"
    log "FerretDB built: $FERRETDB_BIN"
}

find_ferretdb() { # prints a working ferretdb binary path, building one if needed
    local c
    for c in "$FERRETDB_BIN" "$HOME/.cache/ferretdb/ferretdb" "$HOME/.cache/ferretdb/bin/ferretdb" \
             "$HOME/.cache/bin/ferretdb" "$HOME/.cache/ferretdb" "$(command -v ferretdb 2>/dev/null || true)"; do
        if [[ -n "$c" && -f "$c" ]] && ferretdb_works "$c"; then
            echo "$c"; return 0
        fi
    done
    build_ferretdb >&2
    echo "$FERRETDB_BIN"
}

mongo_start() {
    local pid
    pid="$(mongo_pid)"
    if [[ -n "$pid" ]]; then
        if mongo_ping >/dev/null 2>&1 || wait_until 15 mongo_ping; then
            log "mongo-wire: already running ($(cat "$MONGO_KINDFILE" 2>/dev/null || echo '?'), pid $pid)"
            return 0
        fi
        show_log_tail "$(mongo_log)"
        die "mongo-wire server (pid $pid) is running but does not answer ping on $HOST:$MONGO_PORT"
    fi
    if port_open "$HOST" "$MONGO_PORT"; then
        die "port $HOST:$MONGO_PORT is already in use by something that is not our mongod/FerretDB (pidfile $MONGO_PIDFILE).
Stop it or set MONGO_PORT_DYNABASE=<port>."
    fi
    rm -f "$MONGO_PIDFILE"
    local logf
    if command -v mongod >/dev/null 2>&1; then
        echo mongod >"$MONGO_KINDFILE"
        logf="$MONGOD_LOG"
        mkdir -p "$SD/mongo"
        log "mongod: starting on $HOST:$MONGO_PORT"
        if ! mongod --bind_ip "$HOST" --port "$MONGO_PORT" --dbpath "$SD/mongo" \
                --fork --logpath "$logf" --logappend --pidfilepath "$MONGO_PIDFILE" >>"$logf" 2>&1 9>&-; then
            show_log_tail "$logf"
            die "mongod failed to start"
        fi
    else
        local bin
        bin="$(find_ferretdb)"
        echo ferretdb >"$MONGO_KINDFILE"
        printf '%s\n' "$bin" >"$SD/ferretdb.path"
        logf="$FERRETDB_LOG"
        mkdir -p "$SD/ferretdb-data" "$SD/ferretdb-state"
        log "ferretdb: starting $bin on $HOST:$MONGO_PORT (sqlite backend, $SD/ferretdb-data)"
        FERRETDB_TELEMETRY=disable DO_NOT_TRACK=1 setsid nohup "$bin" \
            --listen-addr="$HOST:$MONGO_PORT" \
            --handler=sqlite \
            --sqlite-url="file:$SD/ferretdb-data/" \
            --state-dir="$SD/ferretdb-state" \
            --debug-addr=- \
            --telemetry=disable \
            --log-level=info \
            >>"$logf" 2>&1 </dev/null 9>&- &
        echo $! >"$MONGO_PIDFILE"
    fi
    if ! wait_until "$START_TIMEOUT" mongo_ping; then
        show_log_tail "$logf"
        local err
        err="$(mongo_ping 2>&1 || true)"
        die "mongo-wire server does not answer ping on $HOST:$MONGO_PORT within ${START_TIMEOUT}s${err:+ (last error: $err)}"
    fi
    log "mongo-wire: ready on $HOST:$MONGO_PORT ($(cat "$MONGO_KINDFILE"), pid $(mongo_pid))"
}

mongo_stop() {
    local pid
    pid="$(mongo_pid)"
    if [[ -n "$pid" ]]; then
        log "mongo-wire: stopping ($(cat "$MONGO_KINDFILE" 2>/dev/null || echo '?'), pid $pid)"
        stop_pid "$pid" mongo-wire
        rm -f "$MONGO_PIDFILE"
    else
        log "mongo-wire: not running"
    fi
}

mongo_status() {
    local pid kind
    pid="$(mongo_pid)"
    kind="$(cat "$MONGO_KINDFILE" 2>/dev/null || echo '?')"
    if [[ -n "$pid" ]] && mongo_ping >/dev/null 2>&1; then
        echo "mongo-wire: running ($kind, pid $pid, $HOST:$MONGO_PORT)"
    elif [[ -n "$pid" ]]; then
        echo "mongo-wire: running ($kind, pid $pid) but NOT answering ping on $HOST:$MONGO_PORT"
        return 1
    elif port_open "$HOST" "$MONGO_PORT"; then
        echo "mongo-wire: stopped (port $HOST:$MONGO_PORT is used by a foreign process)"
        return 1
    else
        echo "mongo-wire: stopped"
        return 1
    fi
}

# ---------------------------------------------------------------------------
# stripe-mock
# ---------------------------------------------------------------------------
STRIPE_MOCK_PIDFILE="$SD/stripe-mock.pid"
STRIPE_MOCK_LOG="$SD/stripe-mock.log"
STRIPE_MOCK_BIN="$SD/bin/stripe-mock"
# `go install` builds report "master" as their version: the installed one is
# recorded beside the binary.
STRIPE_MOCK_STAMP="$SD/bin/stripe-mock.version"

stripe_mock_pid() {
    local pid
    pid="$(read_pidfile "$STRIPE_MOCK_PIDFILE")"
    if pid_is "$pid" stripe-mock; then printf '%s' "$pid"; fi
}

# An authenticated GET answered 200 with stripe-mock's own header.
stripe_mock_ping() {
    local reply
    reply="$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "GET /v1/balance HTTP/1.0\r\nHost: %s\r\nAuthorization: Bearer sk_test_services\r\n\r\n" "$1" >&3
        head -c 512 <&3' _ "$HOST" "$STRIPE_MOCK_PORT" 2>/dev/null)" || return 1
    [[ "$reply" == "HTTP/1."?" 200"* && "$reply" == *Stripe-Mock-Version* ]]
}

stripe_mock_installed() {
    [[ -x "$STRIPE_MOCK_BIN" && "$(cat "$STRIPE_MOCK_STAMP" 2>/dev/null || true)" == "$STRIPE_MOCK_VERSION" ]] \
        && timeout 20 "$STRIPE_MOCK_BIN" -version >/dev/null 2>&1
}

install_stripe_mock() {
    local go
    go="$(ensure_go)"
    log "installing stripe-mock $STRIPE_MOCK_VERSION with $("$go" env GOVERSION)"
    mkdir -p "$SD/bin"
    rm -f "$STRIPE_MOCK_STAMP"
    # It ships vendor/ and has no replace directives: `go install mod@version` works.
    if ! (cd / && GOTOOLCHAIN=local GOFLAGS="-buildvcs=false" GO111MODULE=on CGO_ENABLED=0 \
            GOBIN="$SD/bin" "$go" install "$STRIPE_MOCK_MODULE@$STRIPE_MOCK_VERSION") \
            >"$SD/stripe-mock-build.log" 2>&1; then
        show_log_tail "$SD/stripe-mock-build.log"
        die "installing stripe-mock failed"
    fi
    printf '%s\n' "$STRIPE_MOCK_VERSION" >"$STRIPE_MOCK_STAMP"
    stripe_mock_installed || die "freshly installed $STRIPE_MOCK_BIN does not run"
    log "stripe-mock installed: $STRIPE_MOCK_BIN"
}

stripe_mock_start() {
    local pid
    pid="$(stripe_mock_pid)"
    if [[ -n "$pid" ]]; then
        if stripe_mock_ping || wait_until 10 stripe_mock_ping; then
            log "stripe-mock: already running (pid $pid)"
            return 0
        fi
        show_log_tail "$STRIPE_MOCK_LOG"
        die "stripe-mock (pid $pid) is running but does not answer on $HOST:$STRIPE_MOCK_PORT"
    fi
    if port_open "$HOST" "$STRIPE_MOCK_PORT"; then
        die "port $HOST:$STRIPE_MOCK_PORT is already in use by something that is not our stripe-mock (pidfile $STRIPE_MOCK_PIDFILE).
Stop it or set STRIPE_MOCK_PORT_DYNABASE=<port>."
    fi
    stripe_mock_installed || install_stripe_mock
    rm -f "$STRIPE_MOCK_PIDFILE"
    log "stripe-mock: starting on $HOST:$STRIPE_MOCK_PORT"
    # Without -https-addr it would also listen for HTTPS on *:12112.
    setsid nohup "$STRIPE_MOCK_BIN" \
        -http-addr "$HOST:$STRIPE_MOCK_PORT" \
        -https-addr "$HOST:0" \
        >>"$STRIPE_MOCK_LOG" 2>&1 </dev/null 9>&- &
    echo $! >"$STRIPE_MOCK_PIDFILE"
    if ! wait_until "$START_TIMEOUT" stripe_mock_ping; then
        show_log_tail "$STRIPE_MOCK_LOG"
        die "stripe-mock does not answer on $HOST:$STRIPE_MOCK_PORT within ${START_TIMEOUT}s"
    fi
    log "stripe-mock: ready on $HOST:$STRIPE_MOCK_PORT (pid $(stripe_mock_pid))"
}

stripe_mock_stop() {
    local pid
    pid="$(stripe_mock_pid)"
    if [[ -n "$pid" ]]; then
        log "stripe-mock: stopping (pid $pid)"
        stop_pid "$pid" stripe-mock
        rm -f "$STRIPE_MOCK_PIDFILE"
    else
        log "stripe-mock: not running"
    fi
}

stripe_mock_status() {
    local pid
    pid="$(stripe_mock_pid)"
    if [[ -n "$pid" ]] && stripe_mock_ping; then
        echo "stripe-mock: running (pid $pid, http://$HOST:$STRIPE_MOCK_PORT, $STRIPE_MOCK_VERSION)"
    elif [[ -n "$pid" ]]; then
        echo "stripe-mock: running (pid $pid) but NOT answering on $HOST:$STRIPE_MOCK_PORT"
        return 1
    elif port_open "$HOST" "$STRIPE_MOCK_PORT"; then
        echo "stripe-mock: stopped (port $HOST:$STRIPE_MOCK_PORT is used by a foreign process)"
        return 1
    else
        echo "stripe-mock: stopped"
        return 1
    fi
}

# ---------------------------------------------------------------------------
# env file
# ---------------------------------------------------------------------------
write_env() {
    pg_paths
    cat >"$SD/env.tmp" <<EOF
# Generated by scripts/services.sh start — source this file.
export DYNABASE_TEST_PG_HOST=$HOST
export DYNABASE_TEST_PG_PORT=$PG_PORT
export DYNABASE_TEST_PG_SOCKET_DIR=$PG_SOCK_DIR
export DYNABASE_TEST_PG_SUPERUSER=postgres
export DYNABASE_TEST_PG_PASSWORD=postgres
export DYNABASE_TEST_PG_TRUST_USER=trust_user
export DYNABASE_TEST_PG_MD5_USER=md5_user
export DYNABASE_TEST_PG_MD5_PASSWORD=md5pass
export DYNABASE_TEST_REDIS_URL=redis://$HOST:$REDIS_PORT
export DYNABASE_TEST_MONGODB_URL=mongodb://$HOST:$MONGO_PORT
export STRIPE_MOCK_URL=http://$HOST:$STRIPE_MOCK_PORT
export DYNABASE_TEST_BROWSER_PYTHON=$SD/browser/bin/python
EOF
    # Tests that stop a MongoDB-wire server run their own FerretDB: the one
    # this script started, else the one it would build.
    local ferretdb_bin="$FERRETDB_BIN"
    if [[ -f "$SD/ferretdb.path" ]]; then
        ferretdb_bin="$(head -n1 "$SD/ferretdb.path")"
    fi
    if [[ -x "$ferretdb_bin" ]]; then
        echo "export DYNABASE_TEST_FERRETDB_BIN=$ferretdb_bin" >>"$SD/env.tmp"
    fi
    mv -f "$SD/env.tmp" "$SD/env"
}

# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
with_lock() {
    mkdir -p "$SD"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$SD/.lock"
        flock -w 900 9 || die "could not acquire lock $SD/.lock"
    fi
}

# Selenium for the browser test, in a venv of its own (pinned).
SELENIUM_VERSION=4.27.1
ensure_browser_venv() {
    local venv="$SD/browser"
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import selenium" 2>/dev/null; then
        return 0
    fi
    log "browser test venv: selenium $SELENIUM_VERSION"
    python3 -m venv "$venv" || die "python3 -m venv failed"
    "$venv/bin/pip" install -q "selenium==$SELENIUM_VERSION" >&2 || die "pip install selenium failed"
}

# schemathesis for the API check of scripts/test.sh (scripts/schemathesis.sh),
# in a venv of its own (pinned).
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis_venv() {
    local venv="$SD/schemathesis"
    if [[ -x "$venv/bin/schemathesis" ]] \
        && [[ "$("$venv/bin/schemathesis" --version 2>/dev/null)" == *" $SCHEMATHESIS_VERSION" ]]; then
        return 0
    fi
    log "API check venv: schemathesis $SCHEMATHESIS_VERSION"
    python3 -m venv "$venv" || die "python3 -m venv failed"
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" >&2 || die "pip install schemathesis failed"
}

cmd_start() {
    with_lock
    ensure_packages
    ensure_browser_venv
    ensure_schemathesis_venv
    pg_start
    redis_start
    mongo_start
    stripe_mock_start
    write_env
    cat "$SD/env"
}

cmd_stop() {
    with_lock
    local rc=0
    if [[ -x "$PG_BIN/pg_ctl" ]]; then pg_stop || rc=1; fi
    redis_stop || rc=1
    mongo_stop || rc=1
    stripe_mock_stop || rc=1
    return "$rc"
}

cmd_status() {
    local rc=0
    if [[ -x "$PG_BIN/postgres" ]]; then pg_status || rc=3; else echo "postgres: not installed"; rc=3; fi
    if command -v redis-cli >/dev/null 2>&1; then redis_status || rc=3; else echo "redis: not installed"; rc=3; fi
    mongo_status || rc=3
    stripe_mock_status || rc=3
    return "$rc"
}

cmd_env() {
    [[ -f "$SD/env" ]] || die "$SD/env does not exist; run scripts/services.sh start first"
    cat "$SD/env"
}

case "${1:-start}" in
    start)  cmd_start ;;
    stop)   cmd_stop ;;
    status) cmd_status ;;
    env)    cmd_env ;;
    -h|--help|help)
        sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$1' (expected start|stop|status|env)" ;;
esac
