#!/usr/bin/env bash
# Checks the running binary against its own OpenAPI document with
# schemathesis (the pinned venv from scripts/services.sh):
#   1. starts `dynabase serve` on embedded defaults (no MongoDB, no Redis,
#      data in a temporary directory) with a known admin token;
#   2. seeds two organizations and an API token for one through the admin API;
#   3. runs schemathesis on /openapi.json: the probes and /admin with the
#      admin token, then /v1 with the organization's token.
# Checks: no 5xx, every status, content type and body as documented.
# Deterministic (fixed seed, derandomized generation) and bounded
# (SCHEMATHESIS_MAX_EXAMPLES per operation, default 100;
# SCHEMATHESIS_CHECKS overrides the checks).
# Usage: scripts/schemathesis.sh [path/to/dynabase]   (default target/debug/dynabase)
# Under CI=true a missing schemathesis fails; elsewhere the step is skipped.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="${DYNABASE_SERVICES_DIR:-$REPO_ROOT/.services}"
BIN="${1:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/dynabase}"
ST="${DYNABASE_SCHEMATHESIS:-$SERVICES_DIR/schemathesis/bin/schemathesis}"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-100}"
CHECKS="${SCHEMATHESIS_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance}"
ADMIN_TOKEN="schemathesis-admin-token"

if [[ ! -x "$ST" ]]; then
    if [[ "${CI:-}" == "true" ]]; then
        echo "ERROR: schemathesis missing at $ST (scripts/services.sh start installs it)" >&2
        exit 1
    fi
    echo "SKIP: schemathesis missing at $ST; run scripts/services.sh start" >&2
    exit 0
fi
[[ -x "$BIN" ]] || { echo "ERROR: no binary at $BIN" >&2; exit 1; }

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# A clean environment: nothing of the caller's (Stripe or Railway keys,
# MongoDB or Redis URLs) reaches the server.
env -i PATH="$PATH" HOME="$work" \
    DYNABASE_CONFIG_DIR="$REPO_ROOT/config" \
    DYNABASE__STORE__DATA_DIR="$work/data" \
    DYNABASE__HTTP__HOST=127.0.0.1 DYNABASE__PROXY__HOST=127.0.0.1 \
    DYNABASE__PROXY__PORT=0 PORT=0 \
    DYNABASE_ADMIN_TOKEN="$ADMIN_TOKEN" RUST_LOG=warn \
    "$BIN" serve >"$work/stdout" 2>"$work/stderr" &
server_pid=$!

base=""
for _ in $(seq 1 300); do
    base="$(sed -n 's/^dynabase: HTTP API listening on //p' "$work/stdout" | head -n1)"
    [[ -n "$base" ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/stderr" >&2; echo "ERROR: dynabase exited" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$base" ]] || { echo "ERROR: dynabase did not report its HTTP address" >&2; exit 1; }
echo "dynabase at $base" >&2

admin() {
    curl -sS --fail-with-body -H "Authorization: Bearer $ADMIN_TOKEN" \
        -H 'content-type: application/json' "$@"
}
admin -X POST "$base/admin/orgs" \
    -d '{"id":"acme","name":"Acme","tier":"enterprise","upstream":"127.0.0.1:5432"}' >/dev/null
admin -X POST "$base/admin/orgs" \
    -d '{"id":"globex","name":"Globex","tier":"free","upstream":"127.0.0.1:5432"}' >/dev/null

common=(
    --checks "$CHECKS"
    --phases examples,coverage,fuzzing
    --max-examples "$MAX_EXAMPLES"
    --seed 20261205 --generation-deterministic
    --workers 1 --request-timeout 10
    --no-color
)

rc=0
# PUT …/compute is left out: its `command` driver runs shell commands
# (the suspend and wake routes would then run generated ones).
echo "==> schemathesis: probes and /admin" >&2
"$ST" run "$base/openapi.json" "${common[@]}" \
    -H "Authorization: Bearer $ADMIN_TOKEN" \
    --include-path-regex '^/(admin|health|ready)' \
    --exclude-operation-id set_compute || rc=1
# Issued only now: the admin pass may rotate acme's token.
org_token="$(admin -X POST "$base/admin/orgs/acme/api-token" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')"
echo "==> schemathesis: /v1 with the organization's API token" >&2
"$ST" run "$base/openapi.json" "${common[@]}" \
    -H "Authorization: Bearer $org_token" \
    --include-path-regex '^/v1/' || rc=1

if [[ "$rc" -ne 0 ]]; then
    echo "--- dynabase stderr (last 50 lines) ---" >&2
    tail -n 50 "$work/stderr" >&2
fi
exit "$rc"
