#!/usr/bin/env bash
# Issue 22 before/after figures: the hostile inputs of the issue, run against one fetalhc binary (the
# closing note ran it on 5d4a347 built beside the tree, then on this build). Prints one line per row.
# Usage (from the repository root, after scripts/setup.sh; needs ../shared/hc18, dcmtk, curl, python3):
#   bench/issue22_before_after.sh BUILD/fetalhc
# The "before" binary: git worktree add ../old 5d4a347 && (cd ../old && cmake --preset release && cmake --build build --target fetalhc_cli)
set -u
BIN=$(realpath "$1")
cd "$(dirname "$0")/.."
T=$(mktemp -d)
WRAP=build/tests/dicom_wrap
HC=../shared/hc18
px=$(grep "^010_HC.png," $HC/training_set_pixel_size_and_HC.csv | cut -d, -f2)
ports() { python3 -c 'import socket,sys
s=[socket.socket() for _ in range(int(sys.argv[1]))]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"; }
hwm() { awk '/VmHWM/ {print $2}' /proc/$1/status; }
rss() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
wait_up() { for _ in $(seq 1 300); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/health")" = 200 ] && return; sleep 0.1; done; }
# Row 1
$WRAP --nested 6000 $T/nested.dcm
$BIN dicom info $T/nested.dcm >/dev/null 2>&1; r1a=$?
$BIN measure $T/nested.dcm >/dev/null 2>&1; r1b=$?
echo "row 1: dicom info exit $r1a, measure exit $r1b"
# Server for rows 1, 2, 5, 6, 8
read -r HTTP DPORT < <(ports 2)
$BIN serve --model models/fetalhc_unet.pt --port $HTTP --db $T/db/f.db --dicom-port $DPORT --max-upload-mb 200 > $T/serve.log 2>&1 &
S=$!
wait_up $HTTP
URL=http://127.0.0.1:$HTTP
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Fetalhc-Request: 1' -F "image=@$T/nested.dcm" $URL/v1/measure)
sleep 0.5; kill -0 $S 2>/dev/null && alive=alive || alive=dead
echo "row 1: POST /v1/measure nested: $code, server $alive"
if [ $alive = dead ]; then $BIN serve --model models/fetalhc_unet.pt --port $HTTP --db $T/db/f.db --max-upload-mb 200 >> $T/serve.log 2>&1 & S=$!; wait_up $HTTP; fi
# Row 2: a no-cors text/plain POST whose body is a whole POST /v1/exams
sha=$(curl -s -H 'X-Fetalhc-Request: 1' -F "image=@$HC/training_set/010_HC.png" -F pixel_size_mm=$px $URL/v1/measure | python3 -c "import json,sys; print(json.load(sys.stdin)['image_sha256'])")
python3 - $HTTP $sha <<'PY'
import socket, sys, json
port, sha = int(sys.argv[1]), sys.argv[2]
exam = json.dumps({"pregnancy_id": "smuggled-1", "exam_date": "2026-01-02", "image_sha256": sha, "pixel_size_mm": 0.15,
    "corrected": False, "ellipse_px": {"center_x": 400, "center_y": 270, "semi_axis_a": 170, "semi_axis_b": 130, "angle_rad": 0}})
inner = ("POST /v1/exams HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (port, len(exam), exam))
outer = ("POST /v1/exams HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (port, len(inner), inner))
s = socket.create_connection(("127.0.0.1", port)); s.settimeout(3); s.sendall(outer.encode())
out = b""
try:
    while True:
        b = s.recv(65536)
        if not b: break
        out += b
except socket.timeout: pass
print("row 2: responses on the wire: %s" % [l.decode() for l in out.split(b"\r\n") if l.startswith(b"HTTP/1.1")])
PY
echo "row 2: GET smuggled pregnancy: $(curl -s -o /dev/null -w '%{http_code}' $URL/v1/pregnancies/smuggled-1)"
# Row 5: the line-pattern mask
python3 - $T/lines.png <<'PY'
import struct, sys, zlib
w = h = 6300
raw = bytearray()
for y in range(h): raw += b"\x00" + (b"\xff" if y % 2 == 0 else b"\x00") * w
def chunk(k, d): return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d) & 0xffffffff)
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b""))
PY
h0=$(hwm $S)
t0=$(date +%s.%N)
code=$(curl -s -o $T/fit.json -w '%{http_code}' -H 'X-Fetalhc-Request: 1' -F "mask=@$T/lines.png;type=image/png" $URL/v1/fit-ellipse)
echo "row 5: one 6300x6300 line mask: $code in $(python3 -c "import time; print(round(time.time()-$t0,2))") s; peak RSS $(( $(hwm $S) / 1024 )) MB (was $((h0/1024)) MB); RSS now $(( $(rss $S) / 1024 )) MB"
# Row 6: preview of the last frame of a 200-frame cine
$WRAP $HC/training_set/010_HC.png $px $T/cine.dcm "" 200
csha=$(sha256sum $T/cine.dcm | cut -d' ' -f1)
h0=$(hwm $S)
t0=$(date +%s.%N)
curl -s -o /dev/null -H 'X-Fetalhc-Request: 1' -F "image=@$T/cine.dcm" $URL/v1/measure
echo "row 5: a 200-frame 800x540 cine measured in $(python3 -c "import time; print(round(time.time()-$t0,2))") s; peak RSS $(( $(hwm $S) / 1024 )) MB (was $((h0/1024)) MB)"
for f in 0 199; do
  t0=$(date +%s.%N)
  c=$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/images/$csha/preview.png?frame=$f")
  echo "row 6: preview frame $f: $c in $(python3 -c "import time; print(round(time.time()-$t0,3))") s"
done
# Row 8: 16 trickling loopback connections, then the page
python3 - $HTTP <<'PY' &
import socket, sys, time
port = int(sys.argv[1])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"x" * 100 + b"\r\n\r\n"
for i in range(20):
    for s in socks:
        try: s.send(req[i:i+1])
        except OSError: pass
    time.sleep(0.5)
PY
P=$!
sleep 1.5
t0=$(date +%s.%N)
c=$(curl -s -m 30 -o /dev/null -w '%{http_code}' $URL/)
echo "row 8: the page beside 16 trickling connections: $c after $(python3 -c "import time; print(round(time.time()-$t0,2))") s"
wait $P
kill $S; wait $S 2>/dev/null
# Rows 3, 4, 7, 10: the node
$WRAP $HC/training_set/010_HC.png $px $T/cine40.dcm "" 40
read -r HTTP DPORT < <(ports 2)
URL=http://127.0.0.1:$HTTP
$BIN serve --model models/fetalhc_unet.pt --port $HTTP --db $T/db2/f.db --dicom-port $DPORT --max-upload-mb 30 > $T/node.log 2>&1 &
S=$!; wait_up $HTTP
storescu -aec WRONG 127.0.0.1 $DPORT $HC/../dicom/OBXXXX1A.dcm >/dev/null 2>&1; echo "row 10: storescu -aec WRONG exit $?"
python3 -c "import socket,time; s=socket.create_connection(('127.0.0.1', $DPORT)); time.sleep(40)" &
IDLE=$!
sleep 0.5
t0=$(date +%s.%N)
timeout 60 storescu -aec FETALHC 127.0.0.1 $DPORT $T/cine40.dcm >/dev/null 2>&1; rc=$?
echo "row 7: storescu beside one idle connection: exit $rc after $(python3 -c "import time; print(round(time.time()-$t0,1))") s"
kill $IDLE 2>/dev/null; wait $IDLE 2>/dev/null
files=(); for _ in $(seq 1 60); do files+=("$T/cine40.dcm"); done
h0=$(hwm $S)
t0=$(date +%s.%N)
storescu -aec FETALHC 127.0.0.1 $DPORT "${files[@]}" > /dev/null 2>&1
echo "row 3: 60 x 17 MB cines acknowledged in $(python3 -c "import time; print(round(time.time()-$t0,1))") s; peak RSS $(( $(hwm $S) / 1024 )) MB (was $((h0/1024)) MB); RSS now $(( $(rss $S) / 1024 )) MB"
kill -9 $S; wait $S 2>/dev/null
pend=$(curl -s -m 2 "$URL/v1/dicom/instances?limit=1000" 2>/dev/null)
$BIN serve --model models/fetalhc_unet.pt --port $HTTP --db $T/db2/f.db --dicom-port $DPORT --max-upload-mb 30 >> $T/node.log 2>&1 &
S=$!; wait_up $HTTP
p1=$(curl -s "$URL/v1/dicom/instances?limit=1000" | python3 -c "import json,sys; d=json.load(sys.stdin); print(sum(i['status']=='pending' for i in d['instances']), len(d['instances']))")
sleep 60
p2=$(curl -s "$URL/v1/dicom/instances?limit=1000" | python3 -c "import json,sys; d=json.load(sys.stdin); print(sum(i['status']=='pending' for i in d['instances']))")
echo "row 4: after kill -9 and restart: pending/listed $p1 at start, pending $p2 60 s later; RSS $(( $(rss $S) / 1024 )) MB peak $(( $(hwm $S) / 1024 )) MB"
kill $S; wait $S 2>/dev/null
rm -rf $T
