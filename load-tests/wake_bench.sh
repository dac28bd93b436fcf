#!/usr/bin/env bash
# Scale-to-zero wake overhead: on one fresh cluster, ROUNDS alternating
# rounds of `pg_ctl start` alone (to the first accepted connection, probed
# every millisecond) and of a wake through the proxy (connect → first
# SELECT 1 of a suspended org); replaces the `wake_bench` section of
# load-tests/RESULTS.md.
#
#   cargo build --release --bin dynabase -p dynabase-load-tests --bin wake_bench
#   load-tests/wake_bench.sh         # ROUNDS=20 PROFILE=release
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
ROUNDS="${ROUNDS:-20}"
PROFILE="${PROFILE:-release}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
for bin in dynabase wake_bench; do
    [[ -x "$TARGET/$bin" ]] || { echo "build it first: cargo build --$PROFILE --bin dynabase -p dynabase-load-tests --bin wake_bench" >&2; exit 1; }
done

report="$(mktemp)"
trap 'rm -f "$report"' EXIT
{
    echo "## wake_bench"
    echo
    echo "\`ROUNDS=$ROUNDS PROFILE=$PROFILE load-tests/wake_bench.sh\` on $(git -C "$ROOT" rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ)."
    echo "One fresh PostgreSQL 15 cluster (initdb, shared_buffers 16MB), the \`local\` driver, a STARTER org"
    echo "on the embedded store; both measures alternate on the same cluster in the same run."
    echo
    DYNABASE_BIN="$TARGET/dynabase" "$TARGET/wake_bench" "$ROUNDS" 2>/dev/null
} | tee "$report"

python3 - "$HERE/RESULTS.md" "$report" <<'PY'
import sys
path, new = sys.argv[1], open(sys.argv[2]).read().rstrip() + "\n"
text = open(path).read()
begin, end = "<!-- BEGIN wake_bench -->", "<!-- END wake_bench -->"
block = f"{begin}\n{new}{end}\n"
if begin in text:
    head, rest = text.split(begin, 1)
    text = head + block + rest.split(end, 1)[1].lstrip("\n")
else:
    text = text.rstrip() + "\n\n" + block
open(path, "w").write(text)
PY
