#!/usr/bin/env bash
# The client matrix: one small program per PostgreSQL driver, each in the
# driver's own language, run through the proxy against the real PostgreSQL.
#
#   tests/clients/run.sh [PROGRAM|LANGUAGE ...]     (default: all)
#
# Programs: psycopg asyncpg (python), node-pg (node), jdbc (java), pgx (go),
# sqlx (rust). What each checks: docs/clients.md.
#
# Steps: (1) install each program's driver from its registry (pinned
# versions; a venv and built programs under $DYNABASE_SERVICES_DIR/clients),
# (2) build and start the dynabase binary on free ports with an embedded
# store in a temporary directory, against the PostgreSQL of
# scripts/services.sh (its env file), (3) create a main and a FREE
# organization per program through the admin API, (4) run each program and
# count its `ok -` / `not ok -` lines. Ends with `clients: N passed, N failed`
# and exits non-zero on any failure.
#
# Under CI=true a missing toolchain or a failed install is a failure; elsewhere
# a missing toolchain skips its programs.
#
# Environment:
#   DYNABASE_SERVICES_DIR        services state dir (default <repo>/.services)
#   CARGO_TARGET_DIR             where the dynabase binary and the sqlx program build
#   DYNABASE_BIN                 use this dynabase binary instead of building one
#   DYNABASE_CLIENTS_MAIN_TIER   tier of the main organizations (default pro;
#                                enterprise has no QPS limit, so its sessions
#                                run on the proxy's event loop)
#   DYNABASE_CLIENT_VERBOSE=1    programs print stack traces of failures
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLIENTS="$REPO_ROOT/tests/clients"
SERVICES_DIR="${DYNABASE_SERVICES_DIR:-$REPO_ROOT/.services}"
WORK="$SERVICES_DIR/clients"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
MAIN_TIER="${DYNABASE_CLIENTS_MAIN_TIER:-pro}"
PROGRAM_TIMEOUT=300

ALL_PROGRAMS=(psycopg asyncpg node-pg jdbc pgx sqlx)

log() { printf '[clients] %s\n' "$*" >&2; }
die() { printf '[clients] ERROR: %s\n' "$*" >&2; exit 1; }
in_ci() { [[ "${CI:-}" == true ]]; }

language_of() {
    case "$1" in
        psycopg | asyncpg) echo python ;;
        node-pg) echo node ;;
        jdbc) echo java ;;
        pgx) echo go ;;
        sqlx) echo rust ;;
    esac
}

# ---------------------------------------------------------------------------
# Which programs
# ---------------------------------------------------------------------------
PROGRAMS=()
if (($# == 0)); then
    PROGRAMS=("${ALL_PROGRAMS[@]}")
fi
for arg in "$@"; do
    case "$arg" in
        python) PROGRAMS+=(psycopg asyncpg) ;;
        node | node-postgres) PROGRAMS+=(node-pg) ;;
        java) PROGRAMS+=(jdbc) ;;
        go) PROGRAMS+=(pgx) ;;
        rust) PROGRAMS+=(sqlx) ;;
        psycopg | asyncpg | node-pg | jdbc | pgx | sqlx) PROGRAMS+=("$arg") ;;
        -h | --help) sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown program '$arg' (expected one of: ${ALL_PROGRAMS[*]} python node java go rust)" ;;
    esac
done

declare -A STATUS=()    # program -> "" | skip:<why> | fail:<why>
declare -A PASSED=() FAILED=() SECONDS_TAKEN=()
for p in "${PROGRAMS[@]}"; do STATUS[$p]=""; PASSED[$p]=0; FAILED[$p]=0; SECONDS_TAKEN[$p]=-; done

languages() { # the languages of the selected programs, once each
    local p l seen=" "
    for p in "${PROGRAMS[@]}"; do
        l="$(language_of "$p")"
        [[ "$seen" == *" $l "* ]] || { seen+="$l "; echo "$l"; }
    done
}

# Marks every selected program of a language as failed or skipped.
mark_language() { # language kind(fail|skip) why
    local p
    for p in "${PROGRAMS[@]}"; do
        [[ "$(language_of "$p")" == "$1" ]] && STATUS[$p]="$2:$3"
    done
    return 0
}

missing_toolchain() { # language why
    if in_ci; then
        log "$1: $2 (a failure under CI=true)"
        mark_language "$1" fail "$2"
    else
        log "$1: $2 — skipping its programs"
        mark_language "$1" skip "$2"
    fi
}

# ---------------------------------------------------------------------------
# (1) Installs
# ---------------------------------------------------------------------------
install_python() {
    local py="${PYTHON:-python3}"
    command -v "$py" >/dev/null 2>&1 || { missing_toolchain python "python3 not found"; return; }
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        missing_toolchain python "python3 is older than 3.10"
        return
    fi
    local venv="$WORK/venv"
    if ! "$venv/bin/python" -c '' 2>/dev/null; then   # missing, or its Python is gone
        rm -rf "$venv"
        log "python: creating $venv"
        "$py" -m venv "$venv" || { mark_language python fail "venv creation failed"; return; }
    fi
    log "python: pip install -r tests/clients/python/requirements.txt"
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check \
            -r "$CLIENTS/python/requirements.txt" >&2; then
        mark_language python fail "pip install failed"
    fi
}

install_node() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
        || { missing_toolchain node "node or npm not found"; return; }
    local major
    major="$(node -p 'process.versions.node.split(".")[0]')"
    ((major >= 18)) || { missing_toolchain node "node $major is older than 18"; return; }
    log "node: npm ci (node $(node --version))"
    if ! (cd "$CLIENTS/node" && npm ci --no-audit --no-fund --loglevel=error >&2); then
        mark_language node fail "npm ci failed"
    fi
}

install_java() {
    { command -v java && command -v javac && command -v mvn; } >/dev/null 2>&1 \
        || { missing_toolchain java "java, javac or mvn not found"; return; }
    log "java: mvn compile ($(java -version 2>&1 | head -n1))"
    # Maven's log goes to a file (it colours even quiet output); shown on failure.
    if ! mvn -B -f "$CLIENTS/java/pom.xml" compile dependency:build-classpath \
            -Dmdep.outputFile="$CLIENTS/java/target/classpath.txt" >"$WORK/mvn.log" 2>&1; then
        tail -n 40 "$WORK/mvn.log" >&2
        mark_language java fail "mvn compile failed"
    fi
}

install_go() {
    command -v go >/dev/null 2>&1 || { missing_toolchain go "go not found"; return; }
    log "go: go build ($(go env GOVERSION))"
    mkdir -p "$WORK/bin"
    if ! (cd "$CLIENTS/go" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go build -o "$WORK/bin/pgx-check" . >&2); then
        mark_language go fail "go build failed"
    fi
}

install_rust() {
    command -v cargo >/dev/null 2>&1 || { missing_toolchain rust "cargo not found"; return; }
    log "rust: cargo build --release (target $TARGET_DIR/clients-sqlx)"
    if ! cargo build --release --locked --quiet --manifest-path "$CLIENTS/rust/Cargo.toml" \
            --target-dir "$TARGET_DIR/clients-sqlx" >&2; then
        mark_language rust fail "cargo build failed"
    fi
}

# ---------------------------------------------------------------------------
# (2) The dynabase binary and the services
# ---------------------------------------------------------------------------
[[ -f "$SERVICES_DIR/env" ]] \
    || die "$SERVICES_DIR/env does not exist: run scripts/services.sh start first"
# shellcheck disable=SC1091
source "$SERVICES_DIR/env"
PG_UPSTREAM="$DYNABASE_TEST_PG_HOST:$DYNABASE_TEST_PG_PORT"
command -v curl >/dev/null 2>&1 || die "curl not found"

mkdir -p "$WORK"
install_started=$(date +%s)
for lang in $(languages); do
    "install_$lang"
done
log "installs took $(($(date +%s) - install_started)) s"

if [[ -n "${DYNABASE_BIN:-}" ]]; then
    BIN="$DYNABASE_BIN"
else
    log "cargo build --bin dynabase"
    (cd "$REPO_ROOT" && cargo build --quiet --bin dynabase >&2)
    BIN="$TARGET_DIR/debug/dynabase"
fi
[[ -x "$BIN" ]] || die "no dynabase binary at $BIN"

# Expected values from the tier catalog the server reads.
tier_value() { # section key  — e.g. tiers.free max_connections
    awk -v section="[$1]" -v key="$2" '
        /^\[/ { in_section = ($0 == section) }
        in_section && $1 == key { v = $3; gsub(/"/, "", v); print v; exit }
    ' "$REPO_ROOT/config/tiers.toml"
}
FREE_CONNECTIONS="$(tier_value tiers.free max_connections)"
FREE_STATEMENT_TIMEOUT="$(tier_value tiers.free.session statement_timeout)"
MAIN_STATEMENT_TIMEOUT="$(tier_value "tiers.$MAIN_TIER.session" statement_timeout)"
[[ -n "$FREE_CONNECTIONS" && -n "$FREE_STATEMENT_TIMEOUT" && -n "$MAIN_STATEMENT_TIMEOUT" ]] \
    || die "could not read the FREE and ${MAIN_TIER^^} tiers from config/tiers.toml"

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/dynabase-clients.XXXXXX")"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$RUN_DIR"
}
trap cleanup EXIT

ADMIN_TOKEN="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
log "starting $BIN (embedded store in $RUN_DIR)"
env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
    DYNABASE_CONFIG_DIR="$REPO_ROOT/config" \
    DYNABASE__STORE__DATA_DIR="$RUN_DIR/data" \
    DYNABASE__HTTP__HOST=127.0.0.1 \
    DYNABASE__PROXY__HOST=127.0.0.1 \
    DYNABASE__PROXY__PORT=0 \
    DYNABASE__SHUTDOWN__DEADLINE=5s \
    PORT=0 \
    DYNABASE_ADMIN_TOKEN="$ADMIN_TOKEN" \
    RUST_LOG=warn \
    "$BIN" serve >"$RUN_DIR/dynabase.out" 2>"$RUN_DIR/dynabase.err" &
SERVER_PID=$!

HTTP_BASE="" PROXY_PORT=""
for _ in $(seq 1 300); do
    HTTP_BASE="$(sed -n 's/^dynabase: HTTP API listening on \(http[^ ]*\).*/\1/p' "$RUN_DIR/dynabase.out")"
    PROXY_PORT="$(sed -n 's/^dynabase: PostgreSQL proxy listening on [^ ]*:\([0-9][0-9]*\) .*/\1/p' "$RUN_DIR/dynabase.out")"
    [[ -n "$HTTP_BASE" && -n "$PROXY_PORT" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if [[ -z "$HTTP_BASE" || -z "$PROXY_PORT" ]]; then
    tail -n 40 "$RUN_DIR/dynabase.err" >&2 || true
    die "dynabase did not report its addresses within 30 s"
fi
log "dynabase: HTTP $HTTP_BASE, proxy 127.0.0.1:$PROXY_PORT; upstream PostgreSQL $PG_UPSTREAM"

create_org() { # id tier
    local code
    code="$(curl -sS -o "$RUN_DIR/org.json" -w '%{http_code}' -X POST "$HTTP_BASE/admin/orgs" \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d "{\"id\":\"$1\",\"name\":\"Client check $1\",\"tier\":\"$2\",\"upstream\":\"$PG_UPSTREAM\"}")" || code=000
    if [[ "$code" != 201 ]]; then
        log "creating organization $1 ($2): HTTP $code $(cat "$RUN_DIR/org.json" 2>/dev/null)"
        return 1
    fi
}

# ---------------------------------------------------------------------------
# (3) Run the programs
# ---------------------------------------------------------------------------
program_command() { # program -> the command line, one word per line
    case "$1" in
        psycopg) printf '%s\n' "$WORK/venv/bin/python" "$CLIENTS/python/check_psycopg.py" ;;
        asyncpg) printf '%s\n' "$WORK/venv/bin/python" "$CLIENTS/python/check_asyncpg.py" ;;
        node-pg) printf '%s\n' node "$CLIENTS/node/check.js" ;;
        jdbc) printf '%s\n' java -cp "$CLIENTS/java/target/classes:$(cat "$CLIENTS/java/target/classpath.txt")" ClientCheck ;;
        pgx) printf '%s\n' "$WORK/bin/pgx-check" ;;
        sqlx) printf '%s\n' "$TARGET_DIR/clients-sqlx/release/sqlx-check" ;;
    esac
}

run_program() { # program
    local p="$1" main="$1-main" free="$1-free" out="$RUN_DIR/$1.out" started rc
    if ! create_org "$main" "$MAIN_TIER" || ! create_org "$free" free; then
        STATUS[$p]="fail:could not create its organizations"
        return
    fi
    local -a cmd
    mapfile -t cmd < <(program_command "$p")
    log "$p: running (organizations $main ($MAIN_TIER), $free (free))"
    started=$(date +%s)
    set +e
    (
        cd "$CLIENTS"
        export DYNABASE_CLIENT_HOST=127.0.0.1
        export DYNABASE_CLIENT_PORT="$PROXY_PORT"
        export DYNABASE_CLIENT_ROLE="$DYNABASE_TEST_PG_SUPERUSER"
        export DYNABASE_CLIENT_PASSWORD="$DYNABASE_TEST_PG_PASSWORD"
        export DYNABASE_CLIENT_DATABASE=postgres
        export DYNABASE_CLIENT_ORG="$main"
        export DYNABASE_CLIENT_ORG_STATEMENT_TIMEOUT="$MAIN_STATEMENT_TIMEOUT"
        export DYNABASE_CLIENT_FREE_ORG="$free"
        export DYNABASE_CLIENT_FREE_CONNECTIONS="$FREE_CONNECTIONS"
        export DYNABASE_CLIENT_FREE_STATEMENT_TIMEOUT="$FREE_STATEMENT_TIMEOUT"
        timeout --kill-after=10 "$PROGRAM_TIMEOUT" "${cmd[@]}"
    ) 2>&1 | tee "$out" | sed -u "s/^/[$p] /"
    rc=${PIPESTATUS[0]}
    set -e
    SECONDS_TAKEN[$p]=$(($(date +%s) - started))
    PASSED[$p]=$(grep -c '^ok - ' "$out" || true)
    FAILED[$p]=$(grep -c '^not ok - ' "$out" || true)
    if ((rc == 124 || rc == 137)); then
        STATUS[$p]="fail:timed out after ${PROGRAM_TIMEOUT} s"
    elif ((rc != 0)) && ((FAILED[$p] == 0)); then
        STATUS[$p]="fail:exited with status $rc"
    elif ((rc == 0)) && ((FAILED[$p] > 0 || PASSED[$p] == 0)); then
        STATUS[$p]="fail:exited 0 but reported ${FAILED[$p]} failures and ${PASSED[$p]} passes"
    fi
}

for p in "${PROGRAMS[@]}"; do
    if [[ -z "${STATUS[$p]}" ]]; then
        run_program "$p"
    fi
done

# ---------------------------------------------------------------------------
# (4) Summary
# ---------------------------------------------------------------------------
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "dynabase exited during the run; its last log lines:"
    tail -n 40 "$RUN_DIR/dynabase.err" >&2 || true
fi

total_passed=0 total_failed=0 total_skipped=0
printf '\n%-10s %6s %6s %6s  %s\n' program passed failed secs note
for p in "${PROGRAMS[@]}"; do
    note="${STATUS[$p]}"
    case "$note" in
        skip:*) total_skipped=$((total_skipped + 1)) ;;
        fail:*) FAILED[$p]=$((FAILED[$p] + 1)) ;;
    esac
    total_passed=$((total_passed + PASSED[$p]))
    total_failed=$((total_failed + FAILED[$p]))
    printf '%-10s %6s %6s %6s  %s\n' "$p" "${PASSED[$p]}" "${FAILED[$p]}" "${SECONDS_TAKEN[$p]}" "${note#*:}"
done
if ((total_skipped > 0)); then
    echo "clients: $total_passed passed, $total_failed failed, $total_skipped skipped"
else
    echo "clients: $total_passed passed, $total_failed failed"
fi
((total_failed == 0))
