#!/usr/bin/env bash
# Builds the libFuzzer targets (preset `fuzz`: clang, ASan + UBSan, no LibTorch; needs Debian's clang
# and libfuzzer-14-dev), writes their seed corpora and runs one target.
# Usage: scripts/fuzz.sh TARGET SECONDS      TARGET: png_gray | decode_image | pixel_sizes | dicom
# New inputs are kept in build-fuzz/fuzz/corpus/TARGET; a finding is saved in build-fuzz/fuzz/artifacts/TARGET
# and replays with: build-fuzz/fuzz/fuzz_TARGET FILE
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh TARGET SECONDS}
seconds=${2:?usage: scripts/fuzz.sh TARGET SECONDS}
cmake --preset fuzz >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target "fuzz_$target" fuzz_make_seeds
build-fuzz/fuzz/fuzz_make_seeds build-fuzz/fuzz/seeds >/dev/null
extra=()
[ "$target" = dicom ] && extra=(../shared/dicom)
exec fuzz/run.sh "build-fuzz/fuzz/fuzz_$target" "$seconds" "build-fuzz/fuzz/corpus/$target" \
  "build-fuzz/fuzz/seeds/$target" "${extra[@]}"
