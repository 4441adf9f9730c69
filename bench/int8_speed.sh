#!/usr/bin/env bash
# Speed of the int8 path against the float path of the same build, in alternated rounds on one
# machine (ratios, not absolute times, carry across machines). Per round:
#   - `fetalhc bench IMAGE` with and without --int8: median network and total ms per image, and the
#     synthetic cine loop's frames/s;
#   - `fetalhc measure` over a folder of N HC18 images (wall clock, start-up included): one image at
#     a time in float (--workers 1, the path before images in flight), the default (images in
#     flight) in float, and the default with --int8.
# Usage (repository root, after the build): bench/int8_speed.sh [--data ../shared/hc18] [--rounds 3]
#   [--images 100] [--image FILE] [-- extra fetalhc flags, e.g. --model M]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/hc18 ROUNDS=3 N=100 IMG="" EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --data) DATA=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --images) N=$2; shift 2 ;;
    --image) IMG=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -x build/fetalhc ] || { echo "build/fetalhc is missing: run scripts/setup.sh first" >&2; exit 2; }
[ -d "$DATA/training_set" ] || { echo "no HC18 data at '$DATA' (--data DIR)" >&2; exit 2; }
IMG=${IMG:-$DATA/training_set/100_HC.png}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir "$T/imgs"
ls "$DATA/training_set" | grep -E '_HC\.png$' | sort | head -n "$N" |
  while read -r f; do ln -s "$(realpath "$DATA/training_set/$f")" "$T/imgs/$f"; done
N=$(ls "$T/imgs" | wc -l)
PX=(--pixel-sizes "$DATA/training_set_pixel_size_and_HC.csv")

field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): d=d[k]
print(d)' "$1" "$2"; }
bench() {  # $1 = label, rest = flags
  local label=$1; shift
  build/fetalhc bench "$IMG" --runs 40 --video-frames 60 --json "$@" "${EXTRA[@]}" > "$T/$label.json"
  echo "$label network_ms $(field "$T/$label.json" median_ms.network) total_ms $(field "$T/$label.json" median_ms.total)" \
       "video_fps $(field "$T/$label.json" video_frames_per_s)"
}
folder() {  # $1 = label, rest = flags
  local label=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  build/fetalhc measure "$T/imgs" "${PX[@]}" --format csv -q "$@" "${EXTRA[@]}" > /dev/null 2>&1 || true
  t1=$(date +%s.%N)
  echo "$label images_per_s $(python3 -c "print(round($N / ($t1 - $t0), 2))")"
}
echo "fetalhc $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty); image $(basename "$IMG"); folder of $N images; $(nproc) cores"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    bench fp32; bench int8 --int8; folder one_at_a_time_fp32 --workers 1; folder fp32; folder int8 --int8
  else
    bench int8 --int8; bench fp32; folder int8 --int8; folder fp32; folder one_at_a_time_fp32 --workers 1
  fi | sed "s/^/round $r /"
done | tee "$T/rounds.txt"
python3 - "$T/rounds.txt" <<'PY'
import collections, statistics, sys
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    w = line.split()
    for k, x in zip(w[3::2], w[4::2]):
        v[(w[2], k)].append(float(x))
med = {k: statistics.median(x) for k, x in v.items()}
print("medians:", ", ".join(f"{a} {b} {m:.2f}" for (a, b), m in sorted(med.items())))
print(f"network stage, float/int8: {med[('fp32','network_ms')] / med[('int8','network_ms')]:.2f}x faster")
print(f"total per image, float/int8: {med[('fp32','total_ms')] / med[('int8','total_ms')]:.2f}x")
print(f"cine loop frames/s, int8/float: {med[('int8','video_fps')] / med[('fp32','video_fps')]:.2f}x")
print(f"folder images/s, int8 in flight / float one at a time: {med[('int8','images_per_s')] / med[('one_at_a_time_fp32','images_per_s')]:.2f}x"
      f" (float in flight: {med[('fp32','images_per_s')] / med[('one_at_a_time_fp32','images_per_s')]:.2f}x)")
PY
