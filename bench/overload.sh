#!/usr/bin/env bash
# The HTTP service's overload figures (issue 16 "Overload"), each beside the CLI's batch throughput
# measured in the same run on the same images:
#   1. CLI: images/s of `fetalhc measure` over a folder (the first 200 HC18 training PNGs through
#      symlinks when ../shared/hc18 is there, else 200 copies of load_measure's synthetic scan);
#      the start-up (model load) is taken out: (N - 1) / (time of N images - time of 1 image). The
#      baseline is the faster of --threads 1 and two threads with OMP_WAIT_POLICY=PASSIVE.
#   2. Saturation: served req/s of `serve` under closed-loop load (8 clients), target >= 90% of the CLI.
#   3. Open loop at 70% of that saturation rate (Poisson arrivals): served p99 within 4x the latency
#      of a single request (p50 of one client alone).
#   4. 50 closed-loop clients with --max-queue-ms 200 (clients wait Retry-After after a 503):
#      served p99 <= 250 ms, the rest shed with 503, served >= 90% of the CLI, 0 other errors.
# Each round measures all of them; the summary gives the median over the rounds.
#
#   bench/overload.sh                 # 3 rounds of 15 s loads (about 4 minutes)
#   ROUNDS=5 DURATION=30 bench/overload.sh
#   BUILD=build HC18=../shared/hc18 IMAGES=200 bench/overload.sh
#
# Needs python3 (JSON and medians). The machine's load (e.g. other jobs) is printed first: the
# figures are only comparable within a run.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${BUILD:-$here/build}"
HC18="${HC18:-$here/../shared/hc18}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-15}"
IMAGES="${IMAGES:-200}"
fetalhc="$BUILD/fetalhc"
load="$BUILD/bench/load_measure"
for exe in "$fetalhc" "$load"; do
    [[ -x "$exe" ]] || { echo "error: $exe not found; build first (cmake --build build --target fetalhc_cli load_measure)" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "error: python3 is needed (apt-get install python3)" >&2; exit 2; }

work="$(mktemp -d /tmp/fetalhc_overload.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/images" "$work/one" "$work/json"

# ---- the images ------------------------------------------------------------------------------------
if [[ -d "$HC18/training_set" ]]; then
    find "$HC18/training_set" -maxdepth 1 -name '*_HC.png' | sort | head -n "$IMAGES" | while read -r f; do
        ln -s "$(realpath "$f")" "$work/images/$(basename "$f")"
    done
    source_desc="first $IMAGES HC18 training PNGs ($HC18/training_set)"
else
    "$load" --save-synthetic "$work/synthetic.png"
    for i in $(seq -w 1 "$IMAGES"); do ln -s "$work/synthetic.png" "$work/images/synthetic_$i.png"; done
    source_desc="$IMAGES links to one synthetic 800x540 scan (HC18 absent)"
fi
n_images="$(find "$work/images" -name '*.png' | wc -l)"
ln -s "$(realpath "$(find "$work/images" -name '*.png' | sort | head -n 1)")" "$work/one/one.png"
mkdir -p "$work/tenth"
find "$work/images" -name '*.png' | sort | head -n $((IMAGES / 10)) | while read -r f; do ln -s "$(realpath "$f")" "$work/tenth/$(basename "$f")"; done
px=0.1  # any valid pixel size: the work does not depend on it

echo "overload figures: $source_desc; $ROUNDS rounds, ${DURATION} s per load"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); other busy processes:"
ps -eo pid,ni,pcpu,comm --sort=-pcpu | awk 'NR > 1 && $3 > 5 {printf "  pid %s nice %s %s%% %s\n", $1, $2, $3, $4}' | head -n 5

# Seconds one `fetalhc measure` run takes over a folder; more arguments go to measure.
time_cli() {
    local dir=$1 start end
    shift
    start=$(date +%s.%N)
    "$fetalhc" measure --quiet --pixel-size "$px" --format csv "$@" "$dir" >/dev/null
    end=$(date +%s.%N)
    python3 -c "print($end - $start)"
}

# Images/s of one CLI configuration over the folder, start-up taken out; more arguments go to measure.
cli_rate() {
    local t1 tn
    t1=$(time_cli "$work/one" "$@")
    tn=$(time_cli "$work/images" "$@")
    python3 -c "print(($n_images - 1) / max(1e-9, $tn - $t1))"
}

jget() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'j': j}))" "$1" "$2"; }

for r in $(seq 1 "$ROUNDS"); do
    echo "--- round $r"
    # The CLI at its best on this machine: one LibTorch thread, or two with OpenMP threads that sleep
    # instead of spinning (the default, two spinning threads, collapses when another process holds a
    # core; shown on a tenth of the images).
    one=$(cli_rate --threads 1)
    passive=$(OMP_WAIT_POLICY=PASSIVE cli_rate --threads 0)
    spin=$(python3 -c "print(($IMAGES // 10) / max(1e-9, $(time_cli "$work/tenth" --threads 0)))")
    cli=$(python3 -c "print(max($one, $passive))")
    echo "{\"cli_images_per_s\": $cli, \"threads1\": $one, \"passive\": $passive, \"default_spin\": $spin}" >"$work/json/cli_$r.json"
    printf 'CLI over %d images: %.1f images/s with --threads 1, %.1f with 2 threads and OMP_WAIT_POLICY=PASSIVE (baseline: %.1f); default settings %.1f images/s (start-up included, %d images)\n' \
        "$n_images" "$one" "$passive" "$cli" "$spin" "$((IMAGES / 10))"

    "$load" --image "$work/images" --pixel-size "$px" --clients 1 --duration 5 --json-out "$work/json/single_$r.json" >/dev/null
    single=$(jget "$work/json/single_$r.json" "j['served_ms']['p50']")
    echo "single request: p50 $single ms"

    "$load" --image "$work/images" --pixel-size "$px" --clients 8 --duration "$DURATION" --json-out "$work/json/sat_$r.json" >/dev/null
    sat=$(jget "$work/json/sat_$r.json" "j['served_per_s']")
    echo "saturation (8 closed-loop clients): $(printf %.1f "$sat") req/s, errors $(jget "$work/json/sat_$r.json" "j['errors']")"

    rate=$(python3 -c "print(0.7 * $sat)")
    "$load" --image "$work/images" --pixel-size "$px" --rate "$rate" --clients 64 --duration "$DURATION" \
        --json-out "$work/json/open_$r.json" >/dev/null
    echo "open loop at $(printf %.1f "$rate")/s: served p99 $(jget "$work/json/open_$r.json" "j['served_ms']['p99']") ms," \
         "p50 $(jget "$work/json/open_$r.json" "j['served_ms']['p50']") ms, errors $(jget "$work/json/open_$r.json" "j['errors'] + j['shed']")"

    "$load" --image "$work/images" --pixel-size "$px" --clients 50 --max-queue-ms 200 --duration "$DURATION" \
        --json-out "$work/json/over_$r.json" >/dev/null || true
    echo "50 clients, --max-queue-ms 200: served $(printf %.1f "$(jget "$work/json/over_$r.json" "j['served_per_s']")") req/s," \
         "p99 $(jget "$work/json/over_$r.json" "j['served_ms']['p99']") ms, shed $(jget "$work/json/over_$r.json" "j['shed']")," \
         "other errors $(jget "$work/json/over_$r.json" "j['errors']")"
done

# ---- medians and targets --------------------------------------------------------------------------
python3 - "$work/json" "$ROUNDS" <<'EOF'
import json, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
load = lambda k, r: json.load(open(f"{d}/{k}_{r}.json"))
med = lambda xs: statistics.median(xs)
R = range(1, rounds + 1)
cli = med([load("cli", r)["cli_images_per_s"] for r in R])
single = med([load("single", r)["served_ms"]["p50"] for r in R])
sat = med([load("sat", r)["served_per_s"] for r in R])
open_p99 = med([load("open", r)["served_ms"]["p99"] for r in R])
open_bad = sum(load("open", r)["errors"] + load("open", r)["shed"] for r in R)
over_tput = med([load("over", r)["served_per_s"] for r in R])
over_p99 = med([load("over", r)["served_ms"]["p99"] for r in R])
over_shed = sum(load("over", r)["shed"] for r in R)
over_err = sum(load("over", r)["errors"] for r in R)
ok = lambda b: "met" if b else "NOT MET"
print(f"\nmedians over {rounds} rounds (CLI batch throughput {cli:.1f} images/s, single request {single:.0f} ms):")
print(f"  saturation: {sat:.1f} req/s = {sat / cli:.2f} x CLI (target >= 0.90): {ok(sat >= 0.9 * cli)}")
print(f"  open loop at 70% of saturation: served p99 {open_p99:.0f} ms = {open_p99 / single:.1f} x single request "
      f"(target <= 4): {ok(open_p99 <= 4 * single)}; {open_bad} non-200 responses in all rounds")
print(f"  50 clients, --max-queue-ms 200: served p99 {over_p99:.0f} ms (target <= 250): {ok(over_p99 <= 250)}; "
      f"served {over_tput:.1f} req/s = {over_tput / cli:.2f} x CLI (target >= 0.90): {ok(over_tput >= 0.9 * cli)}; "
      f"{over_shed} shed (503) and {over_err} other errors in all rounds (target 0): {ok(over_err == 0)}")
EOF
