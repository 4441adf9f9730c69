#!/usr/bin/env bash
# fetalhc's DICOM node against a real PACS: Debian's Orthanc, started here with a throw-away
# configuration on loopback ports (no systemd), fetalhc registered in it as a modality. Checked
# through Orthanc's REST API (and fetalhc's own list):
#   1. C-ECHO both ways (Orthanc -> fetalhc by REST, fetalhc -> Orthanc by `fetalhc dicom echo`);
#   2. an HC18 scan wrapped into DICOM (dicom_wrap, in a temporary folder: never committed) is
#      uploaded to Orthanc and sent to fetalhc (/modalities/fetalhc/store); fetalhc's SR comes back
#      into the scan's study in Orthanc, its HC equal to `fetalhc measure`'s on the same file (the
#      SR's 0.1 mm), with its key image (a Secondary Capture) that Orthanc renders (/preview: the
#      scan's size, the burned-in ellipse in colour); the round trip (C-STORE in -> SR in Orthanc)
#      is timed, median of 20;
#   3. a multi-frame cine gives one SR (its summary) and one key image; a file with no head gives none, and fetalhc
#      lists it with its reason;
#   4. Orthanc stopped while fetalhc forwards: the row says "pending: ..." and the SR arrives once
#      Orthanc is back ("forwarded");
#   5. DICOMweb STOW-RS into fetalhc: from Orthanc's DICOMweb plugin (/dicom-web/servers/fetalhc/stow,
#      when orthanc-dicomweb is installed) and from a hand-built multipart/related body (curl), with
#      PS3.18's answer (ReferencedSOPSequence, FailedSOPSequence with a reason) and the SR back in Orthanc;
#   6. --dicomweb-forward: a second fetalhc sends its SR and key image to Orthanc's DICOMweb root by STOW-RS.
# Usage: orthanc_test.sh FETALHC DICOM_WRAP MODEL HC18_DIR DICOM_DIR. Exit 77: skipped.
set -u
BIN=$1 WRAP=$2 MODEL=$3 HC18=$4 DICOMS=$5

. "$(dirname "$0")/integration_lib.sh"  # check, free_ports, json, need_tools, need_data
skip() { echo "SKIP orthanc: $*"; exit 77; }
ORTHANC=$(command -v Orthanc || true)
[ -n "$ORTHANC" ] || skip "Orthanc not found (apt-get install orthanc; scripts/setup.sh installs it)"
need_tools storescu dsrdump curl python3
need_data "$MODEL" "$HC18" "$DICOMS"

T=$(mktemp -d)
PIDS=()
ORTHANC_PID=
cleanup() {
  [ -n "$ORTHANC_PID" ] && kill "$ORTHANC_PID" 2>/dev/null && wait "$ORTHANC_PID" 2>/dev/null
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$T"
}
trap cleanup EXIT
read -r HTTP DPORT OHTTP ODICOM HTTP2 < <(free_ports 5)
URL=http://127.0.0.1:$HTTP
O=http://127.0.0.1:$OHTTP

# Orthanc's configuration: loopback only, no authentication (nothing else can reach it), fetalhc as
# a modality and (with the DICOMweb plugin) as a DICOMweb server.
DICOMWEB_PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
plugins="[]"
[ -f "$DICOMWEB_PLUGIN" ] && plugins="[\"$DICOMWEB_PLUGIN\"]"
cat >"$T/orthanc.json" <<EOF
{
  "Name": "fetalhc-orthanc-test",
  "StorageDirectory": "$T/orthanc-db",
  "IndexDirectory": "$T/orthanc-db",
  "HttpPort": $OHTTP,
  "DicomPort": $ODICOM,
  "DicomAet": "ORTHANC",
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "DicomAlwaysAllowEcho": true,
  "DicomAlwaysAllowStore": true,
  "DicomCheckCalledAet": false,
  "DicomModalities": { "fetalhc": ["FETALHC", "127.0.0.1", $DPORT] },
  "Plugins": $plugins,
  "DicomWeb": { "Enable": true, "Root": "/dicom-web/", "Servers": { "fetalhc": { "Url": "http://127.0.0.1:$HTTP/dicomweb/", "ChunkedTransfers": false } } }
}
EOF
start_orthanc() {
  "$ORTHANC" "$T/orthanc.json" >>"$T/orthanc.log" 2>&1 &
  ORTHANC_PID=$!
  for _ in $(seq 1 150); do curl -sf "$O/system" >/dev/null && return 0; sleep 0.2; done
  echo "FAIL Orthanc did not start"; echo "--- orthanc.log"; tail -20 "$T/orthanc.log"; exit 1
}
stop_orthanc() {
  kill "$ORTHANC_PID" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$ORTHANC_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$ORTHANC_PID" 2>/dev/null
  wait "$ORTHANC_PID" 2>/dev/null
  ORTHANC_PID=
}
start_orthanc
echo "ok   Orthanc $(curl -s "$O/system" | json 'd["Version"]') up"

"$BIN" serve --model "$MODEL" --port "$HTTP" --db "$T/db/f.db" --dicom-port "$DPORT" --dicom-aet FETALHC \
  --dicom-forward "ORTHANC@127.0.0.1:$ODICOM" >"$T/serve.log" 2>&1 &
SERVE_PID=$!
PIDS+=("$SERVE_PID")
for _ in $(seq 1 300); do
  curl -sf "$URL/health" >/dev/null && break
  kill -0 "$SERVE_PID" 2>/dev/null || break
  sleep 0.2
done
curl -sf "$URL/health" >/dev/null || { echo "FAIL fetalhc ready"; echo "--- serve.log"; cat "$T/serve.log"; exit 1; }
echo "ok   fetalhc ready"

# 1. C-ECHO both ways.
check "Orthanc C-ECHOes fetalhc" '[ "$(curl -s -o /dev/null -w "%{http_code}" -X POST "$O/modalities/fetalhc/echo" -d "{}")" = 200 ]'
check "fetalhc C-ECHOes Orthanc (fetalhc dicom echo)" '"$BIN" dicom echo "ORTHANC@127.0.0.1:$ODICOM" >"$T/echo.log" 2>&1'

# Files: an HC18 head wrapped with its pixel size, the same as a 4-frame cine, a real file with no head.
scan=010_HC.png
px=$(grep "^$scan," "$HC18/training_set_pixel_size_and_HC.csv" | cut -d, -f2)
"$WRAP" "$HC18/training_set/$scan" "$px" "$T/head.dcm" || { echo "FAIL cannot wrap $scan"; exit 1; }
"$WRAP" "$HC18/training_set/$scan" "$px" "$T/cine.dcm" "" 4 || { echo "FAIL cannot wrap the cine"; exit 1; }

upload() { curl -sf -X POST "$O/instances" --data-binary @"$1" | json 'd["ID"]'; }
study_of() { curl -sf "$O/instances/$1/study" | json 'd["ID"]'; }
# The instances (Orthanc ids) of a study whose series has modality $2, one per line.
instances_in() {
  curl -sf "$O/studies/$1/series?expand" |
    json "'\n'.join(i for s in d if s['MainDicomTags'].get('Modality') == '$2' for i in s['Instances'])"
}
srs_in() { instances_in "$1" SR; }
count_srs() { srs_in "$1" | grep -c . ; }
# Key images: fetalhc's Secondary Captures (modality OT).
count_keys() { instances_in "$1" OT | grep -c . ; }
# Waits until the study $1 holds more than $2 SRs (at most $3 s; $4 = count_keys: key images); true when it does.
wait_srs() {
  local n
  for _ in $(seq 1 $(($3 * 20))); do
    n=$(${4:-count_srs} "$1")
    [ "$n" -gt "$2" ] && return 0
    sleep 0.05
  done
  return 1
}
# png_check FILE WIDTH HEIGHT: a PNG of that size whose pixels hold colour (the burned-in ellipse
# and text on a gray scan). Decoded with Python's zlib: rows unfiltered per the PNG specification.
png_check() {
  python3 - "$@" <<'PY'
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, ihdr = 8, b"", None
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR": ihdr = struct.unpack(">IIBBBBB", body)
    if kind == b"IDAT": idat += body
    pos += 12 + n
w, h, depth, colour, _, _, interlace = ihdr
assert (w, h) == (int(sys.argv[2]), int(sys.argv[3])), "size %dx%d" % (w, h)
if colour != 2 or depth != 8 or interlace: sys.exit("not 8-bit RGB (colour type %d, depth %d): no colour shown" % (colour, depth))
raw, bpp, stride = zlib.decompress(idat), 3, 3 * w
prev, coloured = bytearray(stride), 0
for y in range(h):
    f, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = row[i - bpp] if i >= bpp else 0
        b, c = prev[i], prev[i - bpp] if i >= bpp else 0
        p = a + b - c
        pred = [0, a, b, (a + b) // 2, a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else (b if abs(p - b) <= abs(p - c) else c)][f]
        row[i] = (row[i] + pred) & 255
    coloured += sum(1 for x in range(0, stride, 3) if not (row[x] == row[x + 1] == row[x + 2]))
    prev = row
print("preview %dx%d RGB, %d coloured pixels" % (w, h, coloured))
sys.exit(0 if coloured > 500 else 1)
PY
}
send_to_fetalhc() { curl -sf -X POST "$O/modalities/fetalhc/store" -d "\"$1\"" >/dev/null; }

# 2. The round trip through Orthanc.
head_id=$(upload "$T/head.dcm")
head_study=$(study_of "$head_id")
send_to_fetalhc "$head_id"
wait_srs "$head_study" 0 60
check "the SR comes back into the scan's study in Orthanc" '[ "$(count_srs "$head_study")" -ge 1 ]'
sr_id=$(srs_in "$head_study" | head -1)
curl -sf "$O/instances/$sr_id/file" -o "$T/sr.dcm"
sr_hc=$(dsrdump "$T/sr.dcm" 2>/dev/null | grep -m1 '"Head Circumference")=' | sed 's/.*Circumference")="\([0-9.]*\)".*/\1/')
cli_hc=$("$BIN" measure --model "$MODEL" --format json "$T/head.dcm" 2>/dev/null | json 'd[0]["hc_mm"]')
echo "HC: SR in Orthanc ${sr_hc:-none} mm, CLI $cli_hc mm"
check "the SR's HC equals the CLI's (0.1 mm resolution of the SR)" \
  'python3 -c "import sys; sys.exit(0 if abs(float(\"${sr_hc:-nan}\") - float(\"$cli_hc\")) <= 0.051 else 1)"'
check "the SR keeps the patient and the study" \
  '[ "$(curl -sf "$O/instances/$sr_id/tags?simplify" | json "d[\"PatientID\"] + \"|\" + d[\"StudyInstanceUID\"]")" = "$(curl -sf "$O/instances/$head_id/tags?simplify" | json "d[\"PatientID\"] + \"|\" + d[\"StudyInstanceUID\"]")" ]'
# The key image: a Secondary Capture in its own series of the scan's study, which Orthanc renders.
wait_srs "$head_study" 0 10 count_keys
check "the key image comes back into the scan's study (a new series)" '[ "$(count_keys "$head_study")" -ge 1 ]'
key_id=$(instances_in "$head_study" OT | head -1)
check "the key image is a Secondary Capture with the patient of the scan" \
  '[ "$(curl -sf "$O/instances/$key_id/tags?simplify" | json "d[\"SOPClassUID\"] + \"|\" + d[\"PatientID\"]")" = "1.2.840.10008.5.1.4.1.1.7|$(curl -sf "$O/instances/$head_id/tags?simplify" | json "d[\"PatientID\"]")" ]'
scan_size=$(curl -sf "$O/instances/$head_id/tags?simplify" | json 'd["Columns"] + " " + d["Rows"]')
check "Orthanc renders the key image (/preview): the scan's size, with the ellipse and numbers in colour" \
  'curl -sf "$O/instances/$key_id/preview" -o "$T/key_preview.png" && png_check "$T/key_preview.png" $scan_size'

# The round trip, 20 times: Orthanc's C-STORE to fetalhc -> fetalhc's SR stored in Orthanc.
times=()
for k in $(seq 1 20); do
  before=$(count_srs "$head_study")
  t0=$(date +%s.%N)
  send_to_fetalhc "$head_id"
  wait_srs "$head_study" "$before" 30 || { echo "FAIL round trip $k: no SR within 30 s"; failures=$((failures + 1)); break; }
  t1=$(date +%s.%N)
  times+=("$(python3 -c "print(round(($t1 - $t0) * 1000))")")
done
echo "round trip C-STORE in -> SR in Orthanc (ms): ${times[*]}"
[ "${#times[@]}" -gt 0 ] && echo "round trip median: $(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}') ms over ${#times[@]}"

# 3. A cine (one SR, its summary) and a file with no head (no SR, listed with its reason).
cine_id=$(upload "$T/cine.dcm")
cine_study=$(study_of "$cine_id")
send_to_fetalhc "$cine_id"
wait_srs "$cine_study" 0 60
check "a 4-frame cine: one SR in its study" '[ "$(count_srs "$cine_study")" = 1 ]'
wait_srs "$cine_study" 0 10 count_keys
check "a 4-frame cine: one key image (its summary's frame) in its study" '[ "$(count_keys "$cine_study")" = 1 ]'
nohead_id=$(upload "$DICOMS/OBXXXX1A.dcm")
nohead_study=$(study_of "$nohead_id")
send_to_fetalhc "$nohead_id"
nohead_uid=$(curl -sf "$O/instances/$nohead_id/tags?simplify" | json 'd["SOPInstanceUID"]')
listed_error() { curl -sf "$URL/v1/dicom/instances" | json "next((i.get('error') or '') for i in d['instances'] if i['sop_instance_uid'] == '$nohead_uid' and i['status'] != 'pending')" 2>/dev/null; }
for _ in $(seq 1 200); do [ -n "$(listed_error)" ] && break; sleep 0.05; done
check "no head: fetalhc lists it with its reason" 'listed_error | grep -q "no fetal head"'
sleep 1  # an SR sent for it would be in Orthanc by now
check "no head: no SR in its study" '[ "$(count_srs "$nohead_study")" = 0 ] && [ "$(count_keys "$nohead_study")" = 0 ]'

# 4. Orthanc down while fetalhc forwards: pending, then forwarded once Orthanc is back.
stop_orthanc
storescu -aec FETALHC 127.0.0.1 "$DPORT" "$T/head.dcm" >"$T/storescu.log" 2>&1
check "with Orthanc down, fetalhc still takes the scan" '[ $? -eq 0 ]'
last_status() { curl -sf "$URL/v1/dicom/instances" | json "d['instances'][0]['forward_status'] or ''"; }
for _ in $(seq 1 100); do last_status | grep -q "^pending: try" && break; sleep 0.1; done
echo "while Orthanc is down: $(last_status)"
check "the row says the forward is pending, and why" 'last_status | grep -q "^pending: try .* failed (.*); next in"'
start_orthanc
for _ in $(seq 1 300); do [ "$(last_status)" = forwarded ] && break; sleep 0.1; done
check "the SR is forwarded once Orthanc is back" '[ "$(last_status)" = forwarded ]'
check "and Orthanc holds it in the scan's study" 'wait_srs "$head_study" 21 10'

# 5. STOW-RS into fetalhc. A hand-built multipart/related body, as curl sends it: the head, a file
# with no head (taken, then listed failed by the measurement), and bytes that are no DICOM (refused
# in the answer, FailureReason C000 = 49152).
python3 - "$T/head.dcm" "$DICOMS/OBXXXX1A.dcm" >"$T/stow.body" <<'PY'
import sys
b = b"fetalhc-stow-boundary"
out = b""
for part in [open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read(), b"not a DICOM file"]:
    out += b"--" + b + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
sys.stdout.buffer.write(out + b"--" + b + b"--\r\n")
PY
before=$(count_srs "$head_study")
code=$(curl -s -o "$T/stow.json" -w "%{http_code}" -X POST --data-binary @"$T/stow.body" \
  -H 'Content-Type: multipart/related; type="application/dicom"; boundary=fetalhc-stow-boundary' "$URL/dicomweb/studies")
echo "STOW-RS by curl: HTTP $code $(cat "$T/stow.json")"
taken=$(json 'len(d["00081199"]["Value"])' <"$T/stow.json")
reason=$(json 'd["00081198"]["Value"][0]["00081197"]["Value"][0]' <"$T/stow.json")
check "STOW-RS by curl: 202, two taken and one refused with C000" '[ "$code" = 202 ] && [ "$taken" = 2 ] && [ "$reason" = 49152 ]'
check "STOW-RS by curl: the head's SR arrives in Orthanc" 'wait_srs "$head_study" "$before" 30'
check "STOW-RS into another study's URL: refused (409)" \
  '[ "$(curl -s -o /dev/null -w "%{http_code}" -X POST --data-binary @"$T/stow.body" -H "Content-Type: multipart/related; type=\"application/dicom\"; boundary=fetalhc-stow-boundary" "$URL/dicomweb/studies/1.2.3.4")" = 409 ]'
if [ -f "$DICOMWEB_PLUGIN" ]; then
  before=$(count_srs "$head_study")
  stow=$(curl -s -w " HTTP %{http_code}" -X POST "$O/dicom-web/servers/fetalhc/stow" -d "{\"Resources\": [\"$head_id\"]}")
  echo "Orthanc's STOW-RS to fetalhc: $(echo "$stow" | tr -d '\n ')"
  check "Orthanc's DICOMweb client stores into fetalhc (STOW-RS)" '[[ "$stow" == *"HTTP 200" ]]'
  check "and fetalhc's SR comes back into the study" 'wait_srs "$head_study" "$before" 30'

  # 6. Forwarding by DICOMweb (--dicomweb-forward): a second fetalhc takes the head by STOW-RS and
  # sends its SR and key image to Orthanc's DICOMweb root by STOW-RS; no C-STORE anywhere.
  "$BIN" serve --model "$MODEL" --port "$HTTP2" --db "$T/db2/f.db" --dicomweb --dicomweb-forward "$O/dicom-web/" \
    >"$T/serve2.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$HTTP2/health" >/dev/null && break; sleep 0.2; done
  python3 - "$T/head.dcm" >"$T/stow1.body" <<'PY'
import sys
b = b"fetalhc-stow-boundary"
sys.stdout.buffer.write(b"--" + b + b"\r\nContent-Type: application/dicom\r\n\r\n" + open(sys.argv[1], "rb").read() + b"\r\n--" + b + b"--\r\n")
PY
  before=$(count_srs "$head_study")
  before_keys=$(count_keys "$head_study")
  code=$(curl -s -o /dev/null -w "%{http_code}" -X POST --data-binary @"$T/stow1.body" \
    -H 'Content-Type: multipart/related; type="application/dicom"; boundary=fetalhc-stow-boundary' "http://127.0.0.1:$HTTP2/dicomweb/studies")
  check "--dicomweb-forward: the head taken by STOW-RS (200)" '[ "$code" = 200 ]'
  check "--dicomweb-forward: its SR arrives in Orthanc by STOW-RS" 'wait_srs "$head_study" "$before" 30'
  check "--dicomweb-forward: and its key image" 'wait_srs "$head_study" "$before_keys" 10 count_keys'
  status2() { curl -sf "http://127.0.0.1:$HTTP2/v1/dicom/instances" | json "d['instances'][0]['forward_status'] or ''"; }
  for _ in $(seq 1 100); do [ "$(status2)" = forwarded ] && break; sleep 0.1; done
  check "--dicomweb-forward: the row says forwarded" '[ "$(status2)" = forwarded ]'
else
  echo "skip Orthanc's DICOMweb client: $DICOMWEB_PLUGIN not found (apt-get install orthanc-dicomweb)"
fi

grep -q "forward" "$T/serve.log" && grep "SR forward" "$T/serve.log" | tail -3
if [ "$failures" -gt 0 ]; then
  echo "--- serve.log (last lines)"; tail -20 "$T/serve.log"
  echo "--- orthanc.log (last lines)"; tail -20 "$T/orthanc.log"
  echo "$failures check(s) failed"; exit 1
fi
echo "all Orthanc checks passed"
