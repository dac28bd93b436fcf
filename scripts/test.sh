#!/usr/bin/env bash
# Full local/CI test run for Dynabase:
#   1. start backing services (PostgreSQL, Redis, MongoDB-wire) via scripts/services.sh
#   2. cargo fmt --check, cargo clippy -D warnings, cargo test --workspace
#   3. schemathesis against the debug binary's /openapi.json (scripts/schemathesis.sh)
#   4. the client matrix, tests/clients/run.sh (drivers in their own languages)
#   5. each cargo-fuzz target for a short time, load-tests/fuzz.sh
# Extra arguments are passed to `cargo test` (e.g. scripts/test.sh -- --nocapture).
# CI is passed through unchanged: tests treat CI=true as "missing service = failure".
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
SERVICES_DIR="${DYNABASE_SERVICES_DIR:-$REPO_ROOT/.services}"

step() {
    printf '\n==> %s (disk free: %s)\n' "$*" "$(df -h --output=avail "$REPO_ROOT" 2>/dev/null | tail -1 | tr -d ' ')" >&2
}

# A CI checkout is built once from empty: incremental caches would only take
# disk (several GB across the workspace's test binaries).
if [[ "${CI-}" == "true" ]]; then export CARGO_INCREMENTAL=0; fi

step "starting services"
scripts/services.sh start
# shellcheck disable=SC1091
source "$SERVICES_DIR/env"

# Make sure a cargo installed by rustup is found even in a non-login shell.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "ERROR: cargo not found on PATH. Install a Rust toolchain, e.g.:" >&2
    echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --component rustfmt,clippy" >&2
    exit 1
fi
for sub in fmt clippy; do
    if ! cargo "$sub" --version >/dev/null 2>&1; then
        echo "ERROR: 'cargo $sub' is not available. Install it with: rustup component add ${sub/fmt/rustfmt}" >&2
        exit 1
    fi
done

if [[ -n "${CI+x}" ]]; then export CI; fi
echo "cargo: $(cargo --version); CI=${CI-<unset>}" >&2

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "alert rules: promtool check rules, promtool test rules"
command -v promtool >/dev/null 2>&1 || { echo "ERROR: promtool missing (scripts/services.sh installs Debian's prometheus)" >&2; exit 1; }
(cd deploy/prometheus && promtool check rules alerts.yml && promtool test rules alerts_test.yml)

step "cargo test --workspace $*"
cargo test --workspace "$@"

# The binary against its own OpenAPI document: no 5xx, every answer as
# documented (docs/api.md).
step "schemathesis: the API against /openapi.json"
scripts/schemathesis.sh "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/dynabase"

# Plain-TCP sessions of organizations without a QPS limit run on the proxy's
# event loop, the rest on the async relay; most proxy tests use limited tiers,
# so the proxy suites run a second time with every tier's limit lifted.
proxy_suites=(--test proxy_clients --test proxy_operations --test proxy_protocol
    --test proxy_limits --test proxy_shutdown --test usage_attribution)
step "proxy suites again, every session on the event loop"
DYNABASE_TEST_RELAY=event_loop cargo test -p dynabase "${proxy_suites[@]}" "$@"

# The client matrix (docs/clients.md): psycopg, asyncpg, node-postgres, JDBC,
# pgx and sqlx programs through the binary the tests built; the second pass
# puts the main organizations on ENTERPRISE, whose sessions the event loop relays.
clients_bin="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/dynabase"
step "client matrix"
DYNABASE_BIN="$clients_bin" tests/clients/run.sh
step "client matrix again, main organizations on the event loop"
DYNABASE_BIN="$clients_bin" DYNABASE_CLIENTS_MAIN_TIER=enterprise tests/clients/run.sh

# Fuzz targets (fuzz/README.md), each for a short time so a regression in a
# parser of peer bytes is caught: nightly and cargo-fuzz are installed when
# missing; under CI a failed install fails the run, elsewhere it skips.
# DYNABASE_FUZZ_SECONDS=0 skips the step. The targets are built unoptimised
# and without AddressSanitizer (about a third of the release+ASan build, which
# instruments every dependency): a short run catches panics, hangs and memory
# blow-ups; the long runs in load-tests/RESULTS.md use the full build.
fuzz_seconds="${DYNABASE_FUZZ_SECONDS:-60}"
if ((fuzz_seconds > 0)); then
    step "fuzz targets, $fuzz_seconds s each"
    fuzz_ready=1
    if ! cargo +nightly --version >/dev/null 2>&1; then
        rustup toolchain install nightly --profile minimal || fuzz_ready=0
    fi
    if ((fuzz_ready)) && ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked || fuzz_ready=0
    fi
    if ((fuzz_ready)); then
        FUZZ_BUILD_ARGS="${FUZZ_BUILD_ARGS---dev -s none}" load-tests/fuzz.sh "$fuzz_seconds"
    elif [[ "${CI-}" == "true" ]]; then
        echo "ERROR: could not install the nightly toolchain or cargo-fuzz" >&2
        exit 1
    else
        echo "WARNING: nightly or cargo-fuzz unavailable; fuzz targets skipped" >&2
    fi
fi

step "all checks passed"
