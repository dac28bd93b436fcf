#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/, see fuzz/README.md) for SECONDS, one
# after the other, with bounded memory and a per-input time limit, and prints
# executions, crashes and peak RSS per target. Exits non-zero when any target
# found a crash, a hang or an out-of-memory input (saved in fuzz/artifacts/).
#
#   load-tests/fuzz.sh [SECONDS] [TARGET...]      # SECONDS=60, every target
#
# Environment: FUZZ_RSS_LIMIT_MB (2048), FUZZ_TIMEOUT (10 s per input),
# FUZZ_LOG_DIR (a temporary directory; one libFuzzer log per target),
# FUZZ_BUILD_ARGS (extra `cargo fuzz build/run` flags: empty = release with
# AddressSanitizer, for long runs; CI uses `--dev -s none`, which builds in
# a third of the time and still catches panics, hangs and memory blow-ups in
# our code, which forbids unsafe), CARGO_TARGET_DIR as usual. Needs
# `cargo +nightly` and cargo-fuzz.
# New inputs go to fuzz/corpus-run/<target> (not committed); the committed
# seeds in fuzz/corpus/<target> are read only.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SECONDS_EACH="${1:-60}"
shift || true
ALL_TARGETS=(startup_packet frontend_scanner backend_scanner stripe_webhook relay_state config_values)
if (($# > 0)); then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-2048}"
TIMEOUT="${FUZZ_TIMEOUT:-10}"
read -r -a BUILD_ARGS <<<"${FUZZ_BUILD_ARGS:-}"
LOG_DIR="${FUZZ_LOG_DIR:-$(mktemp -d -t dynabase-fuzz.XXXXXX)}"
mkdir -p "$LOG_DIR"

command -v cargo >/dev/null || { echo "cargo not found" >&2; exit 1; }
cargo +nightly --version >/dev/null 2>&1 || { echo "the nightly toolchain is missing: rustup toolchain install nightly --profile minimal" >&2; exit 1; }
cargo fuzz --version >/dev/null 2>&1 || { echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2; exit 1; }

cd "$ROOT/fuzz"
started=$(date +%s)
echo "building the fuzz targets (cargo +nightly fuzz build ${BUILD_ARGS[*]})" >&2
cargo +nightly fuzz build "${BUILD_ARGS[@]}" >&2
echo "built in $(($(date +%s) - started)) s" >&2

failed=0
rows=()
for target in "${TARGETS[@]}"; do
    [[ -f "fuzz_targets/$target.rs" ]] || { echo "no such target: $target" >&2; exit 1; }
    mkdir -p "corpus-run/$target" "corpus/$target" "artifacts/$target"
    # slow-unit-* files are inputs that took longer than -report_slow_units
    # (10 s) once; on a shared machine that is usually contention. They are
    # reported, and re-run, but are not failures; crash-/timeout-/oom-/leak-
    # files are.
    before=$(find "artifacts/$target" -type f ! -name 'slow-unit-*' | wc -l)
    slow_before=$(find "artifacts/$target" -type f -name 'slow-unit-*' | wc -l)
    log="$LOG_DIR/$target.log"
    echo "fuzzing $target for $SECONDS_EACH s (log: $log)" >&2
    t0=$(date +%s)
    status=0
    cargo +nightly fuzz run "${BUILD_ARGS[@]}" "$target" "corpus-run/$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb="$RSS_LIMIT_MB" \
        -malloc_limit_mb="$RSS_LIMIT_MB" -timeout="$TIMEOUT" \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - t0))
    execs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log" | tail -1)
    rss=$(awk '/stat::peak_rss_mb/ {print $NF}' "$log" | tail -1)
    corpus=$(find "corpus-run/$target" -type f | wc -l)
    found=$(($(find "artifacts/$target" -type f ! -name 'slow-unit-*' | wc -l) - before))
    slow=$(($(find "artifacts/$target" -type f -name 'slow-unit-*' | wc -l) - slow_before))
    if ((status != 0)) || ((found > 0)); then
        failed=1
        tail -30 "$log" >&2
    fi
    rows+=("$(printf '| %s | %s | %s | %s | %s | %s | %s | %s |' "$target" "$elapsed" "${execs:-?}" \
        "$( [[ -n "$execs" && $elapsed -gt 0 ]] && echo $((execs / elapsed)) || echo '?')" \
        "${rss:-?}" "$corpus" "$found" "$slow")")
done

echo
echo "| target | seconds | executions | exec/s | peak RSS (MB) | corpus | crashes/hangs/OOM | slow units |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
echo "logs: $LOG_DIR; limits: -rss_limit_mb=$RSS_LIMIT_MB -malloc_limit_mb=$RSS_LIMIT_MB -timeout=$TIMEOUT"
exit "$failed"
