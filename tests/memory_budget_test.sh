#!/usr/bin/env bash
# Issue 22 row 5: memory per request is bounded by the work, not only by the pixels. Four 6300 x 6300
# line-pattern masks (each under 1 MB as a PNG: 19 M boundary points, 4.1 GB each before) sent to
# POST /v1/fit-ellipse at once are refused before tracing (422 mask_too_complex), and the server's
# peak RSS (VmHWM) stays under the stated bound; it keeps serving afterwards.
# Usage: memory_budget_test.sh FETALHC. Exit 77: skipped.
set -u
BIN=$1
BOUND_MB=${BOUND_MB:-1024}
for tool in curl python3; do command -v "$tool" >/dev/null || { echo "SKIP memory_budget: $tool not found"; exit 77; }; done
T=$(mktemp -d)
SERVE=""
cleanup() { [ -n "$SERVE" ] && kill "$SERVE" 2>/dev/null && wait "$SERVE" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT

# The mask: every other row white, written as a PNG by hand (zlib) so no imaging package is needed.
python3 - "$T/lines.png" <<'PY'
import struct, sys, zlib
w = h = 6300
raw = bytearray()
white, black = b"\x00" + b"\xff" * w, b"\x00" + b"\x00" * w
for y in range(h):
    raw += white if y % 2 == 0 else black
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
echo "mask: $(stat -c %s "$T/lines.png") bytes"
echo "not a model" >"$T/m.pt"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" serve --model "$T/m.pt" --port "$PORT" --db "$T/db/f.db" --max-upload-mb 8 >"$T/serve.log" 2>&1 &
SERVE=$!
URL=http://127.0.0.1:$PORT
for _ in $(seq 1 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" != 000 ] && break; sleep 0.1; done
before=$(awk '/VmHWM/ {print $2}' /proc/$SERVE/status)
t0=$(date +%s.%N)
for k in 1 2 3 4; do
  curl -s -o "$T/r$k.json" -w '%{http_code}\n' -H 'X-Fetalhc-Request: 1' -F "mask=@$T/lines.png;type=image/png" \
    "$URL/v1/fit-ellipse" >"$T/code$k" &
done
wait $(jobs -p | grep -v "^$SERVE$") 2>/dev/null
for k in 1 2 3 4; do while [ ! -s "$T/code$k" ]; do sleep 0.1; done; done
took=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
peak=$(awk '/VmHWM/ {print $2}' /proc/$SERVE/status)
failures=0
for k in 1 2 3 4; do
  code=$(cat "$T/code$k")
  if [ "$code" = 422 ] && grep -q mask_too_complex "$T/r$k.json"; then echo "ok   mask $k: 422 mask_too_complex"
  else echo "FAIL mask $k: $code $(head -c 300 "$T/r$k.json")"; failures=$((failures + 1)); fi
done
echo "four masks at once: ${took} s; peak RSS ${peak} kB (${before} kB before); bound ${BOUND_MB} MB"
if [ "$peak" -lt $((BOUND_MB * 1024)) ]; then echo "ok   peak RSS under ${BOUND_MB} MB"
else echo "FAIL peak RSS ${peak} kB over ${BOUND_MB} MB"; failures=$((failures + 1)); fi
if [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/growth-curve")" = 200 ]; then echo "ok   still serving"
else echo "FAIL the server stopped answering"; failures=$((failures + 1)); fi
[ "$failures" -eq 0 ] || { cat "$T/serve.log"; exit 1; }
echo "memory_budget: all checks passed"
