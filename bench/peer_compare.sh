#!/usr/bin/env bash
# fetalhc against a plain PyTorch HC18 U-Net (bench/peer_unet.py), same images, 2 threads each,
# in alternated rounds. Prints a markdown table. Run from anywhere; paths are relative to the repo root.
#   bench/peer_compare.sh --data ../shared/hc18 [--images 100] [--rounds 3] [--image FILE] [-- FETALHC FLAGS]
# Flags after `--` (e.g. --int8, --model M) go to both `fetalhc bench` and `fetalhc measure`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3  # Debian's python3-torch lives here, not in other pythons on PATH
DATA="" N=100 ROUNDS=3 IMG="" THREADS=2 EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --data) DATA=$2; shift 2 ;;
    --images) N=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --image) IMG=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; exit 1 ;;
  esac
done
[ -n "$DATA" ] || { echo "usage: $0 --data HC18_DIR [--images N] [--rounds R] [--image FILE] [-- fetalhc flags]" >&2; exit 1; }
[ -x build/fetalhc ] || { echo "build/fetalhc is missing: build first (cmake --preset release && cmake --build build)" >&2; exit 1; }
$PY -c 'import torch, cv2, numpy' 2>/dev/null || {
  echo "python3-torch (with OpenCV, NumPy) is missing: apt-get install -y python3-torch python3-opencv python3-numpy" >&2; exit 2; }
IMG=${IMG:-$DATA/training_set/100_HC.png}
[ -f "$IMG" ] || { echo "no image $IMG" >&2; exit 1; }

# The folder: the first N HC18 images (no masks, no annotations), linked into a temp dir outside the repo.
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir "$T/imgs"
ls "$DATA/training_set" | grep -E '\.png$' | grep -vE '_(Annotation|Mask)\.png$' | sort | awk -v n="$N" 'NR<=n' |
  while read -r f; do ln -s "$(realpath "$DATA/training_set/$f")" "$T/imgs/$f"; done
N=$(ls "$T/imgs" | wc -l)
PXCSV=$DATA/training_set_pixel_size_and_HC.csv
[ -f "$PXCSV" ] && PX=(--pixel-sizes "$PXCSV") || PX=(--pixel-size 0.1)

get() { $PY -c 'import json,sys; d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): d=d[int(k)] if k.isdigit() else d[k]
print(d)' "$1" "$2"; }
now() { date +%s.%N; }
calc() { $PY -c "print(f'{$1:.$2f}')"; }

fh_image() { build/fetalhc bench "$IMG" --video-frames 0 --runs 30 --threads $THREADS --json "${EXTRA[@]}" > $T/fh.json
  FH_MS=$(get $T/fh.json median_ms.total); }
py_image() { $PY bench/peer_unet.py --images "$IMG" --runs 30 --threads $THREADS > $T/py.json
  PY_MS=$(get $T/py.json images.0.median_ms.total); PY_RSS=$(get $T/py.json peak_rss_mb); }
fh_folder() { local t0; t0=$(now)
  build/fetalhc measure "$T/imgs" "${PX[@]}" --format csv -q "${EXTRA[@]}" > /dev/null ||
    echo "note: fetalhc measure exited $? (some images not measured?)" >&2
  FH_IPS=$(calc "$N/($(now)-$t0)" 4); }
py_folder() { local t0; t0=$(now)
  $PY bench/peer_unet.py --folder "$T/imgs" --limit "$N" --threads $THREADS > $T/pyf.json
  PY_WALL=$(calc "$N/($(now)-$t0)" 4); PY_IPS=$(get $T/pyf.json folder.images_per_s); }

echo "fetalhc $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo +dirty) flags: ${EXTRA[*]:-none};" \
     "peer: python3-torch $(dpkg-query -W -f='${Version}' python3-torch 2>/dev/null), 216x320 U-Net, random weights;" \
     "threads $THREADS; image $(basename "$IMG"); folder $N images; $(nproc) cores"
echo
echo "| round | image ms fetalhc | image ms peer | peer/fetalhc | folder img/s fetalhc | folder img/s peer (wall incl. start-up) | fetalhc/peer |"
echo "|---|---|---|---|---|---|---|"
R_IMG=() R_FH=() R_PY=() R_FOL=() R_FHI=() R_PYI=() R_PYW=()
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then fh_image; py_image; fh_folder; py_folder
  else py_image; fh_image; py_folder; fh_folder; fi
  ri=$(calc "$PY_MS/$FH_MS" 2); rf=$(calc "$FH_IPS/$PY_IPS" 2)
  R_IMG+=("$ri") R_FH+=("$FH_MS") R_PY+=("$PY_MS") R_FOL+=("$rf") R_FHI+=("$FH_IPS") R_PYI+=("$PY_IPS") R_PYW+=("$PY_WALL")
  echo "| $r | $(calc $FH_MS 1) | $(calc $PY_MS 1) | $ri | $FH_IPS | $(calc $PY_IPS 4) ($PY_WALL) | $rf |"
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "| **median** | $(calc $(med "${R_FH[@]}") 1) | $(calc $(med "${R_PY[@]}") 1) | $(med "${R_IMG[@]}") |" \
     "$(med "${R_FHI[@]}") | $(calc $(med "${R_PYI[@]}") 4) ($(med "${R_PYW[@]}")) | $(med "${R_FOL[@]}") |"
echo
echo "image ms: \`fetalhc bench --runs 30\` median total vs peer median total (file on disk -> HC), 3 warm-ups each."
echo "folder: fetalhc = N / wall seconds of \`fetalhc measure\` as a user runs it (images in flight on the $(nproc) cores, start-up included);"
echo "peer = its own loop timing (Python start-up and model build excluded), wall incl. start-up in brackets."
echo "fetalhc two-pass model: $(get $T/fh.json two_pass); peer peak RSS (image mode): $(calc $PY_RSS 0) MB"
