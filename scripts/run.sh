#!/usr/bin/env bash
# Runs the platform on embedded defaults: no MongoDB, no Redis, data under
# ./data. Development mode: unless DYNABASE_ADMIN_TOKEN is set, a token is
# generated for the run and printed with a first `curl` to try.
#
#   scripts/run.sh [extra `dynabase serve` arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "run.sh: cargo is required (https://rustup.rs)" >&2
  exit 1
fi
cargo build --release --locked --bin dynabase
exec ./target/release/dynabase serve --dev "$@"
