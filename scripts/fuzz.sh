#!/usr/bin/env bash
# Builds the libFuzzer targets (preset `fuzz`: clang, ASan + UBSan; needs Debian's clang and
# libfuzzer-14-dev), writes their seed corpora and runs one target, or all of them briefly.
# Usage: scripts/fuzz.sh TARGET SECONDS   TARGET: png_gray | decode_image | pixel_sizes | dicom | j2k | routes | dicom_node
#        scripts/fuzz.sh all SECONDS      every target for SECONDS each, through `ctest --preset fuzz` (CI)
# New inputs are kept in build-fuzz/fuzz/corpus/TARGET; a finding is saved in
# build-fuzz/fuzz/corpus/artifacts/TARGET and replays with: build-fuzz/fuzz/fuzz_TARGET FILE
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh TARGET|all SECONDS}
seconds=${2:?usage: scripts/fuzz.sh TARGET|all SECONDS}
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || { echo "fuzz.sh: SECONDS must be a positive whole number, got '$seconds'" >&2; exit 2; }
if [ "$target" = all ]; then
  cmake --preset fuzz -DFETALHC_FUZZ_SECONDS="$seconds" >/dev/null
  cmake --build build-fuzz -j "$(nproc)"
  exec ctest --preset fuzz
fi
case "$target" in
  png_gray | decode_image | pixel_sizes | dicom | j2k | routes | dicom_node) ;;
  *) echo "fuzz.sh: unknown target '$target' (png_gray, decode_image, pixel_sizes, dicom, j2k, routes, dicom_node or all)" >&2; exit 2 ;;
esac
cmake --preset fuzz >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target "fuzz_$target" fuzz_make_seeds
build-fuzz/fuzz/fuzz_make_seeds build-fuzz/fuzz/seeds >/dev/null
extra=()
[ "$target" = dicom ] && extra=(../shared/dicom)
exec fuzz/run.sh "build-fuzz/fuzz/fuzz_$target" "$seconds" "build-fuzz/fuzz/corpus/$target" \
  "build-fuzz/fuzz/seeds/$target" "${extra[@]}"
