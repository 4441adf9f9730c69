#!/usr/bin/env bash
# `fetalhc measure --shard I/N` through the CLI, as an indexed Job (deploy/k8s/archive-job.yaml) runs it:
# the N parts of a folder plus a file hold every input exactly once, part I is the inputs at positions
# I, I+N, ... of the unsharded run (files in name order whatever order they were created in), a
# second run gives the same part, and malformed or out-of-range values are usage errors (exit 2).
#
#   bash tests/shard_test.sh FETALHC_BINARY MODEL
#
# The inputs are files that cannot be decoded: each still gets its row (empty values, the error on
# stderr), so no real scan is needed, only the model (measure loads it before reading inputs).
# Exit: 0 all passed, 1 a check failed, 77 (skip) without the model file.
set -u
BIN=${1:?usage: bash tests/shard_test.sh FETALHC_BINARY MODEL}
MODEL=${2:?usage: bash tests/shard_test.sh FETALHC_BINARY MODEL}
if [[ ! -f $MODEL ]]; then
    echo "SKIP shard: model file '$MODEL' is absent (measure loads it before reading inputs)"
    exit 77
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/fetalhc_shard_test.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
unset FETALHC_MODEL
FAILED=0
pass() { echo "ok    $1"; }
fail() {
    echo "FAIL  $1: $2"
    FAILED=1
}

# 11 files created in an order unlike their name order, and one more input named on its own.
mkdir -p "$T/archive"
for name in 07 03 10 00 09 01 05 08 02 06 04; do echo "not a scan" >"$T/archive/scan_$name.png"; done
echo "not a scan" >"$T/extra_scan.png"
INPUTS=("$T/archive" "$T/extra_scan.png")

# rows ARGS...: the file names measure prints (hc18 rows, header dropped); exit code in $RC.
rows() {
    timeout 300 "$BIN" measure --quiet --model "$MODEL" --pixel-size 0.1 --format hc18 "$@" 2>"$T/err" |
        tail -n +2 | cut -d, -f1
    RC=${PIPESTATUS[0]}
}

rows "${INPUTS[@]}" >"$T/all"
expected=$( (printf 'scan_%02d.png\n' $(seq 0 10); echo extra_scan.png))
if [[ $(cat "$T/all") == "$expected" ]]; then pass "unsharded run lists the folder in name order, then the file"
else fail "unsharded order" "got $(tr '\n' ' ' <"$T/all")"; fi

N=3
: >"$T/union"
for ((i = 0; i < N; i++)); do
    rows --shard "$i/$N" "${INPUTS[@]}" >"$T/part$i"
    [[ $RC == 1 ]] || fail "part $i/$N" "exit code $RC, expected 1 (every input fails to decode)"
    # Position k of the unsharded list (from 0) belongs to part k mod N.
    want=$(awk -v i="$i" -v n="$N" '(NR - 1) % n == i' "$T/all")
    if [[ $(cat "$T/part$i") == "$want" ]]; then pass "part $i/$N holds positions $i, $((i + N)), ... of the list"
    else fail "part $i/$N" "got '$(tr '\n' ' ' <"$T/part$i")', expected '$(tr '\n' ' ' <<<"$want")'"; fi
    rows --shard "$i/$N" "${INPUTS[@]}" >"$T/again$i"
    if cmp -s "$T/part$i" "$T/again$i"; then pass "part $i/$N is the same on a second run"
    else fail "part $i/$N twice" "the runs differ"; fi
    cat "$T/part$i" >>"$T/union"
done
if [[ $(sort "$T/union") == $(sort "$T/all") && $(wc -l <"$T/union") -eq 12 ]]; then
    pass "the $N parts hold the 12 inputs exactly once"
else
    fail "union of parts" "$(sort "$T/union" | uniq -c | tr '\n' ' ')"
fi

# More parts than inputs: the surplus parts are empty, not an error.
rows --shard 20/30 "${INPUTS[@]}" >"$T/empty"
if [[ $RC == 0 && ! -s $T/empty ]] && grep -q "this part is empty" "$T/err"; then pass "an empty part exits 0 with a note"
else fail "empty part" "exit $RC, rows '$(cat "$T/empty")', stderr '$(cat "$T/err")'"; fi

# Usage errors (exit 2) name the option, before any model is loaded.
for bad in 3/3 7/3 0/0 -1/3 x 1 1/ /3 1/3/5 "1 /3" 1.5/3; do
    timeout 60 "$BIN" measure --model "$T/no_model.pt" --pixel-size 0.1 --shard "$bad" "${INPUTS[@]}" >"$T/out" 2>"$T/err"
    rc=$?
    if [[ $rc == 2 ]] && grep -q "^error: --shard" "$T/err" && [[ ! -s $T/out ]]; then pass "--shard '$bad' refused (exit 2)"
    else fail "--shard '$bad'" "exit $rc, stderr '$(head -c 300 "$T/err")'"; fi
done

((FAILED)) && { echo "shard: some checks failed"; exit 1; }
echo "shard: all checks passed"
