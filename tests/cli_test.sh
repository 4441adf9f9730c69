#!/usr/bin/env bash
# CLI tests: run the fetalhc binary as a user would and check exit codes and output.
#
#   bash tests/cli_test.sh FETALHC_BINARY MODEL HC18_DATA_DIR
#
# Exit codes under test (tools/main.cpp): 0 everything measured, 1 some inputs failed, 2 usage.
# Checks that need the model skip when the model file is absent; checks that need real images
# skip when the HC18 folder is absent. Usage errors are detected before the model is loaded, so
# they always run. Needs only bash and coreutils; python3, when present, also validates JSON.
# The script exits non-zero when any check fails and lists the failed checks at the end.
set -u

if (($# < 1)); then
    echo "usage: bash $0 FETALHC_BINARY [MODEL] [HC18_DATA_DIR]" >&2
    exit 2
fi
BIN=$1
MODEL=${2:-}
DATA=${3:-}
[[ $BIN == /* ]] || BIN=$PWD/$BIN
if [[ ! -x $BIN ]]; then
    echo "FAIL: fetalhc binary '$BIN' is missing or not executable" >&2
    exit 1
fi
unset FETALHC_MODEL  # the tests pass --model themselves; a user's setting must not leak in

T=$(mktemp -d "${TMPDIR:-/tmp}/fetalhc_cli_test.XXXXXX") || { echo "FAIL: mktemp -d failed" >&2; exit 1; }
trap 'rm -rf "$T"' EXIT
LAST_CMD="(none)"
: >"$T/out"
: >"$T/err"

TIMEOUT=()
command -v timeout >/dev/null 2>&1 && TIMEOUT=(timeout 600)
HAVE_PYTHON=0
command -v python3 >/dev/null 2>&1 && HAVE_PYTHON=1

HAVE_MODEL=0
[[ -n $MODEL && -f $MODEL ]] && HAVE_MODEL=1
HAVE_DATA=0
[[ -n $DATA && -f $DATA/training_set/010_HC.png && -f $DATA/training_set/011_HC.png && -f $DATA/training_set/013_HC.png ]] &&
    HAVE_DATA=1

PASSED=0
SKIPPED=0
FAILED=()

# ---- helpers --------------------------------------------------------------------------------------

# run ARGS...: runs the binary; stdout in $T/out, stderr in $T/err, exit code in $RC.
run() {
    LAST_CMD="fetalhc $*"
    "${TIMEOUT[@]}" "$BIN" "$@" >"$T/out" 2>"$T/err" </dev/null
    RC=$?
}

# run_env VAR=VALUE ARGS...: as run, with one extra environment variable.
run_env() {
    local assignment=$1
    shift
    LAST_CMD="$assignment fetalhc $*"
    env "$assignment" "${TIMEOUT[@]}" "$BIN" "$@" >"$T/out" 2>"$T/err" </dev/null
    RC=$?
}

pass() {
    PASSED=$((PASSED + 1))
    echo "ok    $1"
}

fail() {
    FAILED+=("$1")
    echo "FAIL  $1"
    echo "      command: $LAST_CMD"
    echo "      problem: $2"
    echo "      stdout (first lines):"
    head -n 8 "$T/out" | sed 's/^/        | /'
    echo "      stderr (first lines):"
    head -n 8 "$T/err" | sed 's/^/        | /'
}

skip() {
    SKIPPED=$((SKIPPED + 1))
    echo "SKIP  $1"
}

# expect NAME EXIT_CODE [CHECK PATTERN]...
#   --out TEXT / --err TEXT         stdout / stderr contains TEXT (fixed string)
#   --out-re RE / --err-re RE       stdout / stderr matches the extended regex RE
#   --no-out TEXT / --no-err TEXT   stdout / stderr does not contain TEXT
expect() {
    local name=$1 want=$2
    shift 2
    local problems=()
    [[ $RC == "$want" ]] || problems+=("exit code $RC, expected $want")
    while (($# >= 2)); do
        case $1 in
            --out) grep -qF -- "$2" "$T/out" || problems+=("stdout lacks '$2'") ;;
            --err) grep -qF -- "$2" "$T/err" || problems+=("stderr lacks '$2'") ;;
            --out-re) grep -qE -- "$2" "$T/out" || problems+=("stdout does not match /$2/") ;;
            --err-re) grep -qE -- "$2" "$T/err" || problems+=("stderr does not match /$2/") ;;
            --no-out) grep -qF -- "$2" "$T/out" && problems+=("stdout contains '$2'") ;;
            --no-err) grep -qF -- "$2" "$T/err" && problems+=("stderr contains '$2'") ;;
            *) problems+=("test bug: unknown check $1") ;;
        esac
        shift 2
    done
    if ((${#problems[@]})); then
        local joined
        joined=$(printf '%s; ' "${problems[@]}")
        fail "$name" "${joined%; }"
    else
        pass "$name"
    fi
}

# check NAME CONDITION_DESCRIPTION COMMAND...: passes when COMMAND succeeds (for file checks).
check() {
    local name=$1 what=$2
    shift 2
    if "$@"; then pass "$name"; else fail "$name" "$what"; fi
}

line_count() { wc -l <"$1" | tr -d ' '; }

# valid_json FILE: parses with python3 when present, else a shape check (starts with [ or {).
valid_json() {
    if ((HAVE_PYTHON)); then
        python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$1" 2>/dev/null
    else
        head -c 1 "$1" | grep -q '[[{]'
    fi
}

# Fields of a CSV line, ignoring commas inside "quoted" cells.
csv_fields() { sed 's/"[^"]*"//g' <<<"$1" | awk -F, '{print NF}'; }

png_signature() { [[ $(head -c 8 "$1" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]]; }

HC18_HEADER='filename,center_x_mm,center_y_mm,semi_axes_a_mm,semi_axes_b_mm,angle_rad'
NUM='-?[0-9]+\.[0-9]+'
HC18_ROW_RE="^[^,]+,$NUM,$NUM,$NUM,$NUM,$NUM\$"

echo "fetalhc CLI tests: binary $BIN"
((HAVE_MODEL)) && echo "model: $MODEL" || echo "model: absent ('$MODEL'): checks that run the network are skipped"
((HAVE_DATA)) && echo "data:  $DATA" || echo "data:  absent ('$DATA'): checks that need real images are skipped"

# ---- synthetic inputs --------------------------------------------------------------------------------

mkdir -p "$T/in" "$T/empty_folder"
NO_MODEL=$T/no_such_model.pt
# A text file with an image name, a zero-byte file and a valid 1x1 RGBA PNG (67 bytes).
echo "this is a text file, not an ultrasound scan" >"$T/in/notes_as_image.png"
: >"$T/in/zero_bytes.png"
printf '\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89'\
'\x00\x00\x00\x0aIDAT\x78\x9c\x63\x00\x01\x00\x00\x05\x00\x01\x0d\x0a\x2d\xb4'\
'\x00\x00\x00\x00IEND\xae\x42\x60\x82' >"$T/in/tiny_1x1.png"
check "synthetic 1x1 PNG is 67 bytes" "printf wrote $(wc -c <"$T/in/tiny_1x1.png") bytes" \
    test "$(wc -c <"$T/in/tiny_1x1.png" | tr -d ' ')" = 67
printf 'filename,pixel size(mm)\n010_HC.png,0.1\nbroken.png,not-a-number\n' >"$T/bad_row.csv"

if ((HAVE_DATA)); then
    for n in 010 011 013; do cp "$DATA/training_set/${n}_HC.png" "$T/in/${n}_HC.png"; done
    head -c 200 "$T/in/010_HC.png" >"$T/in/truncated.png"
    # A folder as a user might have it: two scans, a mask beside one, and a note.
    mkdir -p "$T/folder"
    cp "$DATA/training_set/011_HC.png" "$DATA/training_set/010_HC.png" "$DATA/training_set/010_HC_Mask.png" "$T/folder/"
    echo "scan notes" >"$T/folder/readme.txt"
    # Pixel sizes in the official test-set layout, with no row for 013_HC.png.
    {
        echo 'filename,pixel size(mm)'
        grep -E '^01[01]_HC\.png,' "$DATA/training_set_pixel_size_and_HC.csv" | cut -d, -f1,2
    } >"$T/pixel_sizes.csv"
    # A small HC18-layout folder: three labelled images, their masks and the reference CSVs.
    mkdir -p "$T/hc18/training_set"
    for n in 010 011 013; do cp "$DATA/training_set/${n}_HC.png" "$DATA/training_set/${n}_HC_Mask.png" "$T/hc18/training_set/"; done
    {
        head -n 1 "$DATA/training_set_pixel_size_and_HC.csv"
        grep -E '^01[013]_HC\.png,' "$DATA/training_set_pixel_size_and_HC.csv"
    } >"$T/hc18/training_set_pixel_size_and_HC.csv"
    if [[ -f $DATA/training_set_ellipses.csv ]]; then
        {
            head -n 1 "$DATA/training_set_ellipses.csv"
            grep -E '^01[013]_HC\.png,' "$DATA/training_set_ellipses.csv"
        } >"$T/hc18/training_set_ellipses.csv"
    fi
fi

# ---- help and usage errors (no model, no data) ---------------------------------------------------------

run --help
expect "--help lists the subcommands" 0 --out measure --out evaluate --out train --out dataset
run --version
expect "--version prints the version" 0 --out-re '^fetalhc [0-9]+\.[0-9]+'
run measure --help
expect "measure --help shows options and defaults" 0 --out --pixel-size --out --pixel-sizes --out "=text" \
    --out hc18 --out --ga-weeks --out --overlay --out --model
run evaluate --help
expect "evaluate --help shows its options" 0 --out --data --out --split --out --json

run
expect "no subcommand is a usage error" 2 --err subcommand
run --frobnicate
expect "unknown global option is a usage error" 2
run measur x.png
expect "misspelt subcommand is a usage error" 2
run measure --frobnicate --pixel-size 0.13 "$T/in/x.png"
expect "unknown measure option is a usage error" 2 --err frobnicate
run measure --pixel-size 0.13
expect "measure without images is a usage error" 2 --err paths
run measure --pixel-size 0.13 --format xml "$T/in/x.png"
expect "unknown --format is a usage error" 2 --err xml
run dataset
expect "dataset without its subcommand is a usage error" 2
run evaluate
expect "evaluate without --data is a usage error" 2 --err --data

# Pixel size: all of these are refused before the model is loaded (the model path does not exist).
run measure --model "$NO_MODEL" "$T/in/x.png"
expect "measure without a pixel size: exit 2, says so" 2 --err "pixel size" --err --pixel-size \
    --no-err "$NO_MODEL" --no-out HC
run measure --model "$NO_MODEL" --pixel-size 0 "$T/in/x.png"
expect "--pixel-size 0 is refused" 2 --err "must be positive" --err "mm per pixel" --no-err "$NO_MODEL"
run measure --model "$NO_MODEL" --pixel-size -1 "$T/in/x.png"
expect "--pixel-size -1 is refused" 2 --err "must be positive" --no-err "$NO_MODEL"
run measure --model "$NO_MODEL" --pixel-size 3 "$T/in/x.png"
expect "--pixel-size 3 (over 2 mm/pixel) is refused as a unit mistake" 2 --err "unit" --err "2 mm" --no-err "$NO_MODEL"
run measure --model "$NO_MODEL" --pixel-size nan "$T/in/x.png"
expect "--pixel-size nan is refused as not a number" 2 --err "not a number" --no-err "$NO_MODEL"
run measure --model "$NO_MODEL" --pixel-size 0.1mm "$T/in/x.png"
expect "--pixel-size with a unit suffix is refused" 2 --err pixel-size
run measure --model "$NO_MODEL" --pixel-size 0.13 --pixel-sizes "$T/bad_row.csv" "$T/in/x.png"
expect "--pixel-size and --pixel-sizes together are refused" 2 --err "not both" --no-err "$NO_MODEL"
run measure --model "$NO_MODEL" --pixel-size nan --pixel-sizes "$T/bad_row.csv" "$T/in/x.png"
expect "--pixel-size nan with --pixel-sizes is refused, not silently ignored" 2 --no-err "line 3"
run measure --model "$NO_MODEL" --pixel-sizes "$T/no_such.csv" "$T/in/x.png"
expect "missing --pixel-sizes CSV is named" 2 --err "$T/no_such.csv" --no-err "$NO_MODEL"
run measure --model "$NO_MODEL" --pixel-sizes "$T/bad_row.csv" "$T/in/x.png"
expect "bad row in --pixel-sizes CSV is reported with its line" 2 --err "line 3" --err "$T/bad_row.csv"

run measure --model "$NO_MODEL" --pixel-size 0.13 --ga-weeks -3 "$T/in/x.png"
expect "--ga-weeks -3 is refused" 2 --err --ga-weeks --no-err "$NO_MODEL"
run measure --model "$NO_MODEL" --pixel-size 0.13 --ga-weeks 60 "$T/in/x.png"
expect "--ga-weeks 60 is refused" 2 --err --ga-weeks

: >"$T/a_file"
run measure --model "$NO_MODEL" --pixel-size 0.13 --overlay "$T/a_file" "$T/in/x.png"
expect "--overlay naming a file, not a folder, is refused" 2 --err "$T/a_file" --no-err "$NO_MODEL"

run measure --model "$NO_MODEL" --pixel-size 0.13 "$T/in/x.png"
expect "bad --model path: exit 2 naming it" 2 --err "$NO_MODEL" --err "cannot load model"
run_env FETALHC_MODEL="$T/env_model.pt" measure --pixel-size 0.13 "$T/in/x.png"
expect "FETALHC_MODEL is the default model (bad path named)" 2 --err "$T/env_model.pt"
echo "not a torch archive" >"$T/garbage_model.pt"
run measure --model "$T/garbage_model.pt" --pixel-size 0.13 "$T/in/x.png"
expect "corrupt model file: exit 2 naming it" 2 --err "$T/garbage_model.pt"

run evaluate --data "$T/nonexistent_hc18" --model "$NO_MODEL"
expect "evaluate --data on a missing folder: exit 2 naming it" 2 --err "$T/nonexistent_hc18"
run evaluate --data "$T/empty_folder" --model "$NO_MODEL"
expect "evaluate --data on a folder without the HC18 layout: exit 2" 2 --err training_set
run dataset coco --data "$T/nonexistent_hc18" --out "$T/never.json"
expect "dataset coco on a missing folder: exit 2 naming it" 2 --err "$T/nonexistent_hc18"
check "dataset coco on a missing folder writes no file" "$T/never.json exists" test ! -e "$T/never.json"

# ---- bad inputs in a batch (model; real images when present) ------------------------------------------

if ((HAVE_MODEL)); then
    batch=()
    names=()
    if ((HAVE_DATA)); then batch+=("$T/in/010_HC.png"); names+=(010_HC.png); fi
    batch+=("$T/in/missing.png" "$T/in/notes_as_image.png")
    names+=(missing.png notes_as_image.png)
    if ((HAVE_DATA)); then batch+=("$T/in/truncated.png"); names+=(truncated.png); fi
    batch+=("$T/in/zero_bytes.png" "$T/in/tiny_1x1.png" "$T/empty_folder")
    names+=(zero_bytes.png tiny_1x1.png empty_folder)
    run measure --model "$MODEL" --pixel-size 0.13 --format hc18 "${batch[@]}"
    bad=$((${#batch[@]} - HAVE_DATA))
    expect "batch with bad inputs: exit 1, each bad input named on stderr" 1 \
        --err "$T/in/missing.png" --err "does not exist" \
        --err "$T/in/notes_as_image.png" --err "not a readable image" \
        --err "$T/in/zero_bytes.png" --err "0 bytes" \
        --err "$T/in/tiny_1x1.png" --err "1x1" \
        --err "$T/empty_folder" --err "holds no images" \
        --no-out "error"
    errors=$(grep -c '^error:' "$T/err")
    check "batch: one stderr error line per bad input" "$errors error lines for $bad bad inputs" test "$errors" -eq "$bad"
    expected_rows=$(printf '%s\n' filename "${names[@]}")
    actual_rows=$(cut -d, -f1 "$T/out")
    check "batch: one hc18 row per input, in input order" "rows are: $(tr '\n' ' ' <<<"$actual_rows")" \
        test "$actual_rows" = "$expected_rows"
    for n in "${names[@]}"; do
        [[ $n == 010_HC.png ]] && continue
        check "batch: row for bad input $n is empty" "no '$n,,,,,' row" grep -qxF "$n,,,,," "$T/out"
    done
    if ((HAVE_DATA)); then
        expect "batch: truncated PNG is named on stderr" 1 --err "$T/in/truncated.png"
        check "batch: the good image is measured past the bad ones" "010_HC.png row has no numbers" \
            grep -qE "^010_HC\.png,$NUM,$NUM,$NUM,$NUM,$NUM\$" "$T/out"
    fi
else
    skip "batch with bad inputs (model '$MODEL' absent)"
fi

# ---- measuring real images (model and data) ------------------------------------------------------------

if ((HAVE_MODEL && HAVE_DATA)); then
    img=$T/in/010_HC.png

    run measure --model "$MODEL" --pixel-size 0.13 "$img"
    expect "text format: HC, BPD, GA and quality of the image" 0 --out "$img" --out-re "HC +[0-9]+\.[0-9] mm" \
        --out BPD --out OFD --out "GA Hadlock" --out quality --no-out centile

    run measure --model "$MODEL" --pixel-size 0.13 --format json "$img"
    expect "json format: the measurement's fields" 0 --out '"hc_mm"' --out '"quality"' --out '"bpd_mm"' \
        --out '"ellipse_px"' --out '"ellipse_mm"' --out '"pixel_size_mm": 0.13' --out '"source"' --no-out '"centile"'
    check "json format: output is one valid JSON array" "not valid JSON" valid_json "$T/out"
    check "json format: starts with [" "does not start with [" grep -q '^\[' "$T/out"

    run measure --model "$MODEL" --pixel-size 0.13 --format csv "$img"
    expect "csv format: header and a row" 0 --out-re '^file,hc_mm,bpd_mm,ofd_mm,' --out-re "^$img,$NUM,"
    check "csv format: exactly header plus one row" "$(line_count "$T/out") lines" test "$(line_count "$T/out")" -eq 2
    header_fields=$(csv_fields "$(sed -n 1p "$T/out")")
    row_fields=$(csv_fields "$(sed -n 2p "$T/out")")
    check "csv format: the row has as many fields as the header" "header $header_fields, row $row_fields" \
        test "$header_fields" = "$row_fields"

    run measure --model "$MODEL" --pixel-size 0.13 --format hc18 "$T/in/011_HC.png" "$T/in/010_HC.png"
    expect "hc18 format: two images measured" 0
    check "hc18 format: exact challenge header" "first line is '$(sed -n 1p "$T/out")'" \
        test "$(sed -n 1p "$T/out")" = "$HC18_HEADER"
    check "hc18 format: one row per image" "$(line_count "$T/out") lines" test "$(line_count "$T/out")" -eq 3
    check "hc18 format: rows in input order" "rows: $(cut -d, -f1 "$T/out" | tr '\n' ' ')" \
        test "$(cut -d, -f1 "$T/out" | tr '\n' ' ')" = "filename 011_HC.png 010_HC.png "
    check "hc18 format: every row has five numbers" "a row without numbers" \
        bash -c '! sed -n "2,\$p" "$1" | grep -vqE "$2"' _ "$T/out" "$HC18_ROW_RE"

    # Pixel sizes from a CSV, with one image missing from it.
    run measure --model "$MODEL" --pixel-sizes "$T/pixel_sizes.csv" --format hc18 \
        "$T/in/010_HC.png" "$T/in/013_HC.png" "$T/in/011_HC.png"
    expect "--pixel-sizes: an image without a row fails by name, exit 1" 1 --err 013_HC.png --err "no row" \
        --err "$T/pixel_sizes.csv" --out-re '^013_HC\.png,,,,,$' \
        --out-re "^010_HC\.png,$NUM,$NUM,$NUM,$NUM,$NUM\$" --out-re "^011_HC\.png,$NUM,$NUM,$NUM,$NUM,$NUM\$"
    check "--pixel-sizes: every input has its row, in order" "rows: $(cut -d, -f1 "$T/out" | tr '\n' ' ')" \
        test "$(cut -d, -f1 "$T/out" | tr '\n' ' ')" = "filename 010_HC.png 013_HC.png 011_HC.png "
    ps010=$(grep -E '^010_HC\.png,' "$T/pixel_sizes.csv" | cut -d, -f2)
    run measure --model "$MODEL" --pixel-sizes "$T/pixel_sizes.csv" --format json "$T/in/010_HC.png"
    expect "--pixel-sizes: the image's own pixel size is used" 0 --out "\"pixel_size_mm\": $ps010"

    # A folder expands to its scans, sorted, without masks or other files.
    run measure --model "$MODEL" --pixel-size 0.13 --threads 1 --format hc18 "$T/folder"
    expect "folder input: both scans measured" 0 --no-out Mask --no-out readme
    check "folder input: sorted scans only" "rows: $(cut -d, -f1 "$T/out" | tr '\n' ' ')" \
        test "$(cut -d, -f1 "$T/out" | tr '\n' ' ')" = "filename 010_HC.png 011_HC.png "

    # Overlays.
    run measure --model "$MODEL" --pixel-size 0.13 --overlay "$T/overlays/new" "$T/in/010_HC.png" "$T/in/missing.png"
    expect "--overlay: measured image ok, missing one fails" 1 --err "$T/in/missing.png"
    check "--overlay: writes <stem>_overlay.png" "no non-empty $T/overlays/new/010_HC_overlay.png" \
        test -s "$T/overlays/new/010_HC_overlay.png"
    check "--overlay: the file is a PNG" "no PNG signature" png_signature "$T/overlays/new/010_HC_overlay.png"
    check "--overlay: nothing written for the failed input" "$(ls "$T/overlays/new" | tr '\n' ' ')" \
        test "$(ls "$T/overlays/new")" = "010_HC_overlay.png"

    # Known gestational age adds the INTERGROWTH-21st centile.
    run measure --model "$MODEL" --pixel-size 0.13 --ga-weeks 20 --format json "$img"
    expect "--ga-weeks 20: json has the centile" 0 --out '"centile"' --out '"ga_weeks_given": 20' --out '"z"'
    check "--ga-weeks 20: json is valid" "not valid JSON" valid_json "$T/out"
    run measure --model "$MODEL" --pixel-size 0.13 --ga-weeks 20 "$img"
    expect "--ga-weeks 20: text has the centile" 0 --out centile

    # JPEG input: no encoder is available to a bash test on a bare machine (test_image_io covers it).
    skip "JPEG, 16-bit and RGB inputs (need an image encoder; covered by tests/test_image_io.cpp)"
else
    skip "measuring real images: formats, --pixel-sizes, folders, --overlay, --ga-weeks (need model and ../shared/hc18)"
fi

# ---- evaluate and dataset coco on a small HC18-layout folder ---------------------------------------------------

if ((HAVE_DATA)); then
    run dataset coco --data "$T/hc18" --out "$T/coco.json"
    expect "dataset coco: exit 0, reports what it wrote" 0 --err "3 images" --err "$T/coco.json"
    for key in annotations bbox iscrowd segmentation categories fetal_head 010_HC.png 011_HC.png 013_HC.png; do
        check "dataset coco: output contains $key" "'$key' missing from $T/coco.json" grep -qF "$key" "$T/coco.json"
    done
    check "dataset coco: output is valid JSON" "not valid JSON" valid_json "$T/coco.json"
    check "dataset coco: masks are not listed as images" "a _Mask file name is in the export" \
        bash -c '! grep -qE "\"file_name\": ?\"[^\"]*_Mask" "$1"' _ "$T/coco.json"

    run evaluate --data "$T/hc18" --model "$NO_MODEL"
    expect "evaluate with a bad --model: exit 2 naming it" 2 --err "$NO_MODEL"
    if ((HAVE_MODEL)); then
        run evaluate --data "$T/hc18" --model "$MODEL"
        expect "evaluate: table with HC difference and Dice" 0 --out Dice --out "HC diff" --out-re "n= *3 " \
            --out AP50 --out worst
        run evaluate --data "$T/hc18" --model "$MODEL" --json --worst 2
        expect "evaluate --json: the metrics" 0 --out '"hc_abs_diff_mm"' --out '"dice"' --out '"hausdorff_mm"' \
            --out '"mask_ap50"' --out '"per_trimester"' --out '"images": 3' --out '"worst"'
        check "evaluate --json: valid JSON" "not valid JSON" valid_json "$T/out"
        run model calibrate --data "$T/hc18" --model "$MODEL" --out "$T/calibrated.pt"
        expect "model calibrate: exit 0, reports both factors and what it wrote" 0 --err "axis scale" \
            --err "training images" --err "$T/calibrated.pt"
        run evaluate --data "$T/hc18" --model "$T/calibrated.pt"
        expect "model calibrate: its output is a model that measures" 0 --out-re "n= *3 "
        run model calibrate --data "$T/empty_folder" --model "$MODEL" --out "$T/never.pt"
        expect "model calibrate on a folder without the HC18 layout: exit 2, nothing written" 2 --err training_set
        check "model calibrate: no output file after an error" "$T/never.pt exists" test ! -e "$T/never.pt"
        run evaluate --data "$T/hc18" --model "$MODEL" --per-image "$T/rows.csv"
        expect "evaluate --per-image: exit 0" 0 --out Dice
        check "evaluate --per-image: header and one row per image" "not 4 lines with the header first" \
            bash -c '[[ $(wc -l <"$1") == 4 ]] && head -1 "$1" | grep -q "^filename,ref_hc_mm,hc_mm,diff_mm"' _ "$T/rows.csv"
    else
        skip "evaluate on real images (model '$MODEL' absent)"
    fi
else
    skip "evaluate and dataset coco on real images (../shared/hc18 absent at '$DATA')"
fi

# ---- bench -----------------------------------------------------------------------------------------------------

run bench --runs 0 --model "$MODEL"
expect "bench --runs 0: usage error" 2 --err "--runs"
run bench --model "$T/no_such_model.pt"
expect "bench with a missing model: exit 2 naming it" 2 --err "no_such_model.pt"
if ((HAVE_MODEL)); then
    run bench --model "$MODEL" --runs 2 --video-frames 4 --threads 2
    expect "bench: stage table, images/s and video frames/s" 0 --out "total (file -> HC)" --out "images/s" \
        --out-re "video +[0-9.]+ frames/s over a 4-frame cine loop"
    run bench --model "$MODEL" --runs 2 --video-frames 4 --json
    expect "bench --json: medians and throughput" 0 --out '"median_ms"' --out '"images_per_s"' --out '"runs": 2' \
        --out '"video_frames": 4'
    check "bench --json: valid JSON" "not valid JSON" valid_json "$T/out"
    if ((HAVE_PYTHON)); then
        check "bench --json: positive timings, total >= network" "a timing is not positive or total < network" \
            python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); m=j["median_ms"]; sys.exit(0 if min(m.values())>0 and m["total"]>=m["network"] and j["video_frames_per_s"]>0 else 1)' "$T/out"
    fi
else
    skip "bench runs (model '$MODEL' absent)"
fi

# ---- summary ---------------------------------------------------------------------------------------------------

echo
echo "cli_test: $PASSED passed, ${#FAILED[@]} failed, $SKIPPED skipped"
if ((${#FAILED[@]})); then
    echo "failed checks:"
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
fi
exit 0
