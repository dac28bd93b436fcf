#!/usr/bin/env bash
# Bills ORGS organizations (default 10,000) for one closed period against
# Stripe's stripe-mock, then bills the same period again, on the embedded
# store and on the MongoDB-wire server; reports items created, duplicates
# (must be 0), wall time and store reads per org, and replaces the
# `billing_bench` section of load-tests/RESULTS.md.
#
#   scripts/services.sh start      # stripe-mock, the MongoDB-wire server
#   cargo build --release -p dynabase-load-tests --bin billing_bench
#   load-tests/billing_bench.sh    # ORGS=10000 STORES="embedded mongodb"
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/.services/env"
ORGS="${ORGS:-10000}"
STORES="${STORES:-embedded mongodb}"
BIN="${BIN:-$ROOT/target/release/billing_bench}"
[[ -x "$BIN" ]] || { echo "build it first: cargo build --release -p dynabase-load-tests --bin billing_bench" >&2; exit 1; }

report="$(mktemp)"
trap 'rm -f "$report"' EXIT
{
    echo "## billing_bench"
    echo
    echo "\`ORGS=$ORGS load-tests/billing_bench.sh\` on $(git -C "$ROOT" rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ)."
    echo "Each org: STARTER, 30 vCPU-hours, its own Stripe customer (owes \$0.75). Stripe: async-stripe"
    echo "against stripe-mock ($STRIPE_MOCK_URL), a look-up and a create per org. Store reads are the"
    echo "job's reads (the plan's four, the period's records, the due lists), whatever the number of orgs."
    for store in $STORES; do
        echo
        echo "### $store"
        echo
        MONGODB_URL="${DYNABASE_TEST_MONGODB_URL:-mongodb://127.0.0.1:27017}" \
            "$BIN" "$ORGS" "$store"
    done
} | tee "$report"

python3 - "$HERE/RESULTS.md" "$report" <<'PY'
import sys, re
path, new = sys.argv[1], open(sys.argv[2]).read().rstrip() + "\n"
text = open(path).read()
begin, end = "<!-- BEGIN billing_bench -->", "<!-- END billing_bench -->"
block = f"{begin}\n{new}{end}"
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n" + block + "\n"
open(path, "w").write(text)
PY
