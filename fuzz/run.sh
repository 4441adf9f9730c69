#!/usr/bin/env bash
# Runs one libFuzzer target for SECONDS on its seeds: run.sh BINARY SECONDS CORPUS_DIR SEED_DIR...
# New inputs go to CORPUS_DIR (kept between runs); seed folders that do not exist are skipped.
# A crash, leak, UBSan report, timeout (10 s) or out-of-memory (2 GB) fails with the input saved in
# CORPUS_DIR/../artifacts/.
set -euo pipefail
bin=$1 seconds=$2 corpus=$3
shift 3
dirs=()
for d in "$@"; do [ -d "$d" ] && dirs+=("$d"); done
artifacts="$(dirname "$corpus")/artifacts/$(basename "$corpus")"
mkdir -p "$corpus" "$artifacts"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
exec "$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" "${dirs[@]}"
