#!/usr/bin/env bash
# The DICOM node of `fetalhc serve --dicom-port` end to end, with DCMTK's own tools as the
# ultrasound machine (storescu) and the PACS (storescp):
#   1. an HC18 scan wrapped into DICOM (dicom_wrap, in a temporary folder: never committed) is
#      measured, listed by GET /v1/dicom/instances, and its SR is forwarded; the SR's HC (dsrdump)
#      equals the CLI's HC for the same file (to the SR's 0.1 mm resolution);
#   2. a real file with no head, and files that cannot be measured (no calibration, a lying
#      60000 x 60000 header) are stored and listed with their error; the node keeps running;
#   3. --dicom-allow refuses other AE titles; an object over the upload limit aborts its
#      association and the node keeps serving;
#   4. the list is behind the bearer token when one is set;
#   5. the C-STORE-to-stored-result latency (median of 3) is printed;
#   6. a full image store (--max-store-mb) refuses a C-STORE with A700 (Refused: Out of Resources);
#   7. (issue 24, with PLANES_DIR and the head check beside the model) a mixed obstetric study:
#      HC18 heads and ../shared/planes non-head planes, all wrapped with a region calibration; the
#      heads are measured and their SRs forwarded, the others listed `not_measured` with the reason.
# Usage: dicom_node_test.sh FETALHC DICOM_WRAP MODEL HC18_DIR DICOM_DIR [PLANES_DIR]. Exit 77: skipped.
set -u
BIN=$1 WRAP=$2 MODEL=$3 HC18=$4 DICOMS=$5 PLANES=${6:-}

. "$(dirname "$0")/integration_lib.sh"  # check, free_ports, json, need_tools, need_data
skip() { echo "SKIP dicom_node: $*"; exit 77; }
need_tools storescu storescp dsrdump curl python3
need_data "$MODEL" "$HC18" "$DICOMS"

T=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$T"; }
trap cleanup EXIT

# An HC18 scan with a head, wrapped with its known pixel size as the region calibration.
scan=010_HC.png
px=$(grep "^$scan," "$HC18/training_set_pixel_size_and_HC.csv" | cut -d, -f2)
"$WRAP" "$HC18/training_set/$scan" "$px" "$T/head.dcm" || { echo "FAIL cannot wrap $scan"; exit 1; }
cp "$DICOMS/OBXXXX1A.dcm" "$T/huge.dcm" && chmod u+w "$T/huge.dcm"
dcmodify -nb -m "(0028,0010)=60000" -m "(0028,0011)=60000" -m "(0008,0018)=1.2.826.0.1.3680043.2.1125.9.1" "$T/huge.dcm" \
  || { echo "FAIL set-up: dcmodify could not write the 60000 x 60000 header"; exit 1; }

read -r HTTP DPORT PACS < <(free_ports 3)
mkdir -p "$T/pacs"
storescp -aet PACS -od "$T/pacs" "$PACS" >"$T/storescp.log" 2>&1 &
PIDS+=($!)
"$BIN" serve --model "$MODEL" --port "$HTTP" --db "$T/db/f.db" --dicom-port "$DPORT" \
  --dicom-forward "PACS@127.0.0.1:$PACS" >"$T/serve.log" 2>&1 &
SERVE_PID=$!
PIDS+=("$SERVE_PID")
URL=http://127.0.0.1:$HTTP
for _ in $(seq 1 300); do
  curl -sf "$URL/health" >/dev/null && break
  kill -0 "$SERVE_PID" 2>/dev/null || break  # it exited (e.g. its port was taken)
  sleep 0.2
done
# Nothing below can pass without the server: stop here with its log rather than wait on every check.
curl -sf "$URL/health" >/dev/null || { echo "FAIL server ready"; echo "--- serve.log"; cat "$T/serve.log"; exit 1; }
echo "ok   server ready"

# Waits until the server at URL $1 answers /health 200 (the model loaded); a server that never does
# fails the test at once with its log ($2), so that no negative check below passes against nothing.
wait_healthy() {
  for _ in $(seq 1 300); do curl -sf "$1/health" >/dev/null && return 0; sleep 0.2; done
  echo "FAIL the server at $1 never became ready"; echo "--- $2"; cat "$2"; exit 1
}

# Waits until `n` instances are listed and none is pending; prints the list.
wait_listed() {
  local n=$1 body
  for _ in $(seq 1 600); do
    body=$(curl -sf "$URL/v1/dicom/instances")
    if [ "$(echo "$body" | json "sum(i['status'] != 'pending' for i in d['instances'])")" -ge "$n" ]; then
      echo "$body"; return 0
    fi
    sleep 0.05
  done
  echo "$body"; return 1
}

storescu -aec FETALHC 127.0.0.1 "$DPORT" "$T/head.dcm" "$DICOMS/OBXXXX1A.dcm" "$DICOMS/US1_UNCR.dcm" "$T/huge.dcm" \
  >"$T/storescu.log" 2>&1
sent_rc=$?
check "storescu sent four objects" '[ $sent_rc -eq 0 ]'
list=$(wait_listed 4)
listed_rc=$?
check "four instances listed and processed" '[ $listed_rc -eq 0 ] && [ "$(echo "$list" | json "len(d[\"instances\"])")" = 4 ]'
head_row() { echo "$list" | json "[i for i in d['instances'] if i['id'] == 1][0]$1"; }
check "the head was measured, ok, from the region calibration" \
  '[ "$(head_row "[\"status\"]")" = measured ] && [ "$(head_row "[\"quality\"]")" = ok ] && [ "$(head_row "[\"calibration_source\"]")" = "ultrasound region 0" ]'
# The SR is sent by the node's forwarder after the row is stored: wait for its status.
forward_status() { curl -sf "$URL/v1/dicom/instances" | json "[i for i in d['instances'] if i['id'] == $1][0]['forward_status']"; }
for _ in $(seq 1 100); do [ "$(forward_status 1)" = forwarded ] && break; sleep 0.1; done
check "its SR was forwarded" '[ "$(forward_status 1)" = forwarded ]'
# Issue 26: every received object is in the audit trail, as the node's user (the built-in dicom-node).
head_uid=$(head_row '["sop_instance_uid"]')
check "the audit trail holds the head's C-STORE by dicom-node (status 0)" \
  '"$BIN" audit export --db "$T/db/f.db" --format json | json "any(e[\"action\"] == \"DICOM C-STORE\" and e[\"user\"] == \"dicom-node\" and e[\"outcome\"] == 0 and e[\"sop_instance_uid\"] == \"$head_uid\" for e in d)" | grep -q True'
mkdir -p "$T/db6"
"$BIN" user add vera --role viewer --db "$T/db6/f.db" >/dev/null 2>&1
"$BIN" serve --model "$MODEL" --port 0 --db "$T/db6/f.db" --dicom-port 65534 --dicom-user vera >"$T/serve6.log" 2>&1
serve6_rc=$?
check "--dicom-user naming a viewer: serve refuses to start, saying the role needed" '[ $serve6_rc -ne 0 ] && grep -q "sonographer" "$T/serve6.log"'
check "no head: listed with its error" \
  'echo "$list" | json "[i for i in d[\"instances\"] if i[\"id\"] == 2][0][\"error\"]" | grep -q "no fetal head"'
check "no calibration: listed with its error" \
  'echo "$list" | json "[i for i in d[\"instances\"] if i[\"id\"] == 3][0][\"error\"]" | grep -q "calibration"'
check "a 60000 x 60000 header: listed with its error" \
  'echo "$list" | json "[i for i in d[\"instances\"] if i[\"id\"] == 4][0][\"error\"]" | grep -q "60000"'
check "the received objects are kept by content hash" \
  '[ "$(curl -s -o /dev/null -w "%{http_code}" "$URL$(head_row "[\"image_url\"]")")" = 200 ]'

# The forwarded SR against the CLI on the same file.
# storescp names files by kind: SRc.<uid> for the SR, SC.<uid> for the key image.
for _ in $(seq 1 100); do ls "$T/pacs" | grep -q "^SC\." && break; sleep 0.1; done
sr=$(ls "$T"/pacs/SRc.* 2>/dev/null | head -1)
check "its key image (a Secondary Capture) was forwarded with it" '[ "$(ls "$T"/pacs/SC.* 2>/dev/null | wc -l)" = 1 ]'
sr_hc=$(dsrdump "$sr" 2>/dev/null | grep -m1 '"Head Circumference")=' | sed 's/.*Circumference")="\([0-9.]*\)".*/\1/')
cli_hc=$("$BIN" measure --model "$MODEL" --format json "$T/head.dcm" 2>/dev/null | json 'd[0]["hc_mm"]')
node_hc=$(head_row '["hc_mm"]')
echo "HC: SR $sr_hc mm, node $node_hc mm, CLI $cli_hc mm"
check "the SR's HC equals the CLI's (0.1 mm resolution of the SR)" \
  'python3 -c "import sys; sys.exit(0 if abs(float(\"$sr_hc\") - float(\"$cli_hc\")) <= 0.051 else 1)"'
check "the listed HC equals the CLI's" \
  'python3 -c "import sys; sys.exit(0 if abs(float(\"$node_hc\") - float(\"$cli_hc\")) <= 1e-6 else 1)"'

# Latency from the C-STORE to the stored result, for one image (median of 3).
lat=()
for k in 1 2 3; do
  t0=$(date +%s.%N)
  storescu -aec FETALHC 127.0.0.1 "$DPORT" "$T/head.dcm" >/dev/null 2>&1
  wait_listed $((4 + k)) >/dev/null || { echo "FAIL instance $((4 + k)) was never processed"; failures=$((failures + 1)); }
  t1=$(date +%s.%N)
  lat+=("$(python3 -c "print(round(($t1 - $t0) * 1000))")")
done
echo "C-STORE to stored result, seen by a client (storescu start to the list showing it): ${lat[*]} ms" \
  "(median $(printf '%s\n' "${lat[@]}" | sort -n | sed -n 2p) ms)"
node_ms=$(grep -o 'instance [5-7] measured [0-9]* ms' "$T/serve.log" | awk '{print $4}' | sort -n | tr '\n' ' ')
echo "C-STORE received to result stored, by the node's log: $node_ms ms (median $(echo $node_ms | tr ' ' '\n' | sed -n 2p) ms)"

# A second node: an allow-list, a small upload limit, a token.
read -r HTTP2 DPORT2 < <(free_ports 2)
echo "0123456789abcdef0123456789abcdef" >"$T/token"
"$BIN" serve --model "$MODEL" --port "$HTTP2" --db "$T/db2/f.db" --dicom-port "$DPORT2" --dicom-aet NODE2 \
  --dicom-allow "MODALITY, US1" --max-upload-mb 0.3 --token-file "$T/token" >"$T/serve2.log" 2>&1 &
PIDS+=($!)
URL2=http://127.0.0.1:$HTTP2
wait_healthy "$URL2" "$T/serve2.log"
check "a calling AE title not allowed is rejected" '! storescu -aet OTHER -aec NODE2 127.0.0.1 "$DPORT2" "$T/head.dcm" >/dev/null 2>&1'
check "an allowed AE title is accepted" 'storescu -aet US1 -aec NODE2 127.0.0.1 "$DPORT2" -xr "$DICOMS/OBXXXX1A_rle.dcm" >/dev/null 2>&1'
check "an object over the upload limit is refused" '! storescu -aet MODALITY -aec NODE2 127.0.0.1 "$DPORT2" "$DICOMS/OBXXXX1A.dcm" >/dev/null 2>&1'
check "the node still serves after that" 'storescu -aet MODALITY -aec NODE2 127.0.0.1 "$DPORT2" -xr "$DICOMS/OBXXXX1A_rle.dcm" >/dev/null 2>&1'
check "the list needs the token" '[ "$(curl -s -o /dev/null -w "%{http_code}" "$URL2/v1/dicom/instances")" = 401 ]'
check "the list with the token" \
  '[ "$(curl -s -H "Authorization: Bearer 0123456789abcdef0123456789abcdef" "$URL2/v1/dicom/instances" | json "len(d[\"instances\"])")" = 2 ]'

# A third node whose image store quota (0.1 MB) is smaller than the object: the C-STORE is refused
# with status A700 (Refused: Out of Resources), so the sender keeps the object and may retry, and
# the log says why.
read -r HTTP3 DPORT3 < <(free_ports 2)
"$BIN" serve --model "$MODEL" --port "$HTTP3" --db "$T/db3/f.db" --dicom-port "$DPORT3" --max-store-mb 0.1 \
  >"$T/serve3.log" 2>&1 &
PIDS+=($!)
wait_healthy "http://127.0.0.1:$HTTP3" "$T/serve3.log"
storescu -v -aec FETALHC 127.0.0.1 "$DPORT3" "$DICOMS/OBXXXX1A.dcm" >"$T/storescu3.log" 2>&1
check "a full image store refuses a C-STORE with Out of Resources (A700)" \
  'grep -q "Received Store Response (Refused: OutOfResources)" "$T/storescu3.log"'
check "the log names the status and why" 'grep -q "status A700.*image store is full" "$T/serve3.log"'

# ---- Issue 22: acknowledged instances survive a crash, the queue is bounded, hostile peers ----
# A fourth node whose model file is not a model: nothing is measured while there is no model, so
# every instance received stays pending (as when the workers are busy), and is measured once a
# restart brings the model.
echo "not a model" >"$T/broken.pt"
mkdir -p "$T/tmp4"
read -r HTTP4 DPORT4 < <(free_ports 2)
URL4=http://127.0.0.1:$HTTP4
start_node4() {
  TMPDIR="$T/tmp4" "$BIN" serve --model "$1" --host 127.0.0.1 --port "$HTTP4" --db "$T/db4/f.db" --dicom-port "$DPORT4" \
    --dicom-max-pending 12 --dicom-idle-timeout 3 --max-upload-mb 30 >>"$T/serve4.log" 2>&1 &
  NODE4=$!
  PIDS+=("$NODE4")
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL4/health")" != 000 ] && return 0
    sleep 0.1
  done
  echo "FAIL the fourth node never answered"; echo "--- serve4.log"; cat "$T/serve4.log"; exit 1
}
start_node4 "$T/broken.pt"
listening=$(python3 -c 'import sys
port = int(sys.argv[1])
for line in open("/proc/net/tcp").readlines()[1:] + open("/proc/net/tcp6").readlines()[1:]:
    f = line.split()
    if f[3] == "0A" and int(f[1].split(":")[1], 16) == port: print(f[1].split(":")[0])' "$DPORT4")
check "row 7: the node listens on --host 127.0.0.1 only (listening on: $listening)" '[ "$listening" = 0100007F ]'
# Row 7: an idle connection and a trickling one hold no one else up; the trickle is cut although
# it keeps sending (a byte a second, under the 1 KiB per idle window).
python3 - "$DPORT4" >"$T/idle.txt" 2>&1 <<'PY' &
import socket, sys, time
idle = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
trickle = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
t0 = time.time()
cut = None
for _ in range(30):
    try:
        trickle.send(b"\x01")
    except OSError:
        cut = time.time() - t0
        break
    time.sleep(1)
print("trickle cut after %s s" % (None if cut is None else round(cut, 1)))
PY
TRICKLE=$!
sleep 0.5
t0=$(date +%s.%N)
timeout 20 storescu -aec FETALHC 127.0.0.1 "$DPORT4" "$T/head.dcm" >"$T/storescu4a.log" 2>&1
rc=$?
took=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
check "row 7: a legitimate C-STORE beside an idle and a trickling connection is served at once ($took s)" \
  '[ $rc -eq 0 ] && python3 -c "import sys; sys.exit(0 if $took < 5 else 1)"'
wait "$TRICKLE"
check "row 7: the trickling peer is cut within the first window ($(cat "$T/idle.txt"))" \
  'python3 -c "import sys; t = open(\"$T/idle.txt\").read().split()[-2]; sys.exit(0 if t != \"None\" and float(t) <= 12 else 1)"'
# Row 10: another called AE title is rejected; row 11: peer strings are escaped in the log.
check "row 10: an association to another called AE title is rejected" \
  '! storescu -aec WRONG 127.0.0.1 "$DPORT4" "$T/head.dcm" >/dev/null 2>&1 && grep -q "called .WRONG. refused" "$T/serve4.log"'
storescu -aec $'X\n[error] FAKE' 127.0.0.1 "$DPORT4" "$T/head.dcm" >/dev/null 2>&1
check "row 11: control characters from a peer are escaped in the log" \
  'grep -q "X\\\\x0A\[error\] FAKE" "$T/serve4.log" && ! grep -q "^\[error\] FAKE" "$T/serve4.log"'
# Row 9: an invalid SOP Instance UID is refused with a status and listed with its error.
cp "$T/head.dcm" "$T/bad_uid.dcm"
dcmodify -nb -m "(0008,0018)=1.2.3.<script>" "$T/bad_uid.dcm" >/dev/null 2>&1
storescu -v -aec FETALHC 127.0.0.1 "$DPORT4" "$T/bad_uid.dcm" >"$T/storescu4b.log" 2>&1
check "row 9: an invalid SOP Instance UID is refused with status C000" 'grep -q "Error: CannotUnderstand\|0xc000" "$T/storescu4b.log"'
check "row 9: ... and listed as failed with the reason" \
  'curl -s "$URL4/v1/dicom/instances" | json "[i for i in d[\"instances\"] if i[\"status\"] == \"failed\"][0][\"error\"]" | grep -q "not a DICOM UID"'
# Row 3: the queue is bounded: 12 may wait (one above was accepted), the rest get A700.
files=()
for _ in $(seq 1 14); do files+=("$T/head.dcm"); done
storescu -v -aec FETALHC 127.0.0.1 "$DPORT4" "${files[@]}" >"$T/storescu4c.log" 2>&1
refused=$(grep -c "Refused: OutOfResources" "$T/storescu4c.log")
pending=$(curl -s "$URL4/v1/dicom/instances" | json "sum(i['status'] == 'pending' for i in d['instances'])")
storescu -v -aec FETALHC 127.0.0.1 "$DPORT4" "$T/head.dcm" >>"$T/storescu4c.log" 2>&1
refused_again=$(grep -c "Refused: OutOfResources" "$T/storescu4c.log")
check "row 3: with 12 waiting, further C-STOREs are refused with A700 (storescu halts at the first: refused $refused, then $refused_again; pending $pending)" \
  '[ "$refused" = 1 ] && [ "$refused_again" = 2 ] && [ "$pending" = 12 ]'
# Row 4: kill -9 with 12 acknowledged instances unmeasured; at restart (with the model) all 12 are
# measured within a minute, each once; the crashed run's spool folder is removed.
kill -9 "$NODE4"
wait "$NODE4" 2>/dev/null
spool_before=$(ls "$T/tmp4" | grep fetalhc-dicom- | tr '\n' ' ')
t0=$(date +%s.%N)
start_node4 "$MODEL"
for _ in $(seq 1 600); do
  left=$(curl -s "$URL4/v1/dicom/instances" | json "sum(i['status'] == 'pending' for i in d['instances'])" 2>/dev/null)
  [ "$left" = 0 ] && break
  sleep 0.1
done
took=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
measured=$(curl -s "$URL4/v1/dicom/instances" | json "sum(i['status'] == 'measured' for i in d['instances'])")
once=$(grep -o "instance [0-9]* measured" "$T/serve4.log" | sort | uniq -d | wc -l)
check "row 4: the 12 acknowledged instances are measured after a kill -9 and restart ($measured in $took s, $once twice)" \
  '[ "$measured" = 12 ] && [ "$once" = 0 ] && python3 -c "import sys; sys.exit(0 if $took < 60 else 1)"'
spool_after=$(ls "$T/tmp4" | grep fetalhc-dicom- | tr '\n' ' ')
check "row 14: the crashed run's spool folder is removed at start (before: $spool_before; after: $spool_after)" \
  '[ -n "$spool_before" ] && [ "$(echo $spool_after | wc -w)" = 1 ] && [ "$spool_before" != "$spool_after" ]'

# ---- Issue 24: a mixed study. Non-head planes from patients the head check never trained on
# (held back by its split, docs/head_check.md), wrapped with a 0.2 mm region calibration.
MIXED_HEADS="010_HC.png 200_HC.png"
MIXED_OTHERS="Patient01682_Plane5_2_of_2.png Patient00305_Plane2_2_of_2.png Patient00097_Plane4_1_of_1.png Patient00691_Plane6_1_of_1.png"
if [ -z "$PLANES" ] || [ ! -f "$PLANES/labels.csv" ]; then
  echo "skip mixed study: no planes folder (PLANES_DIR, ../shared/planes)"
elif [ ! -f "$(dirname "$MODEL")/fetalhc_head_check.pt" ]; then
  echo "skip mixed study: no head check beside $MODEL"
else
  mkdir -p "$T/study" "$T/pacs5"
  uid=0
  for f in $MIXED_HEADS; do
    uid=$((uid + 1))
    px=$(grep "^$f," "$HC18/training_set_pixel_size_and_HC.csv" | cut -d, -f2)
    "$WRAP" "$HC18/training_set/$f" "$px" "$T/study/head_$f.dcm" "1.2.826.0.1.3680043.2.1125.24.$uid" || failures=$((failures + 1))
  done
  for f in $MIXED_OTHERS; do
    uid=$((uid + 1))
    "$WRAP" "$PLANES/images/$f" 0.2 "$T/study/other_$f.dcm" "1.2.826.0.1.3680043.2.1125.24.$uid" || failures=$((failures + 1))
  done
  read -r HTTP5 DPORT5 PACS5 < <(free_ports 3)
  storescp -aet PACS -od "$T/pacs5" "$PACS5" >"$T/storescp5.log" 2>&1 &
  PIDS+=($!)
  "$BIN" serve --model "$MODEL" --port "$HTTP5" --db "$T/db5/f.db" --dicom-port "$DPORT5" \
    --dicom-forward "PACS@127.0.0.1:$PACS5" >"$T/serve5.log" 2>&1 &
  PIDS+=($!)
  URL=http://127.0.0.1:$HTTP5
  wait_healthy "$URL" "$T/serve5.log"
  n_heads=$(echo $MIXED_HEADS | wc -w) n_others=$(echo $MIXED_OTHERS | wc -w)
  storescu -aec FETALHC 127.0.0.1 "$DPORT5" "$T"/study/*.dcm >"$T/storescu5.log" 2>&1
  list=$(wait_listed $((n_heads + n_others)))
  echo "$list" | json "'\n'.join('  %s %s %s' % (i['sop_instance_uid'], i['status'], i.get('error') or i.get('hc_mm')) for i in d['instances'])"
  uids() { echo "$list" | json "' '.join(sorted(i['sop_instance_uid'].split('.')[-1] for i in d['instances'] if $1))"; }
  heads_uids=$(seq 1 "$n_heads" | tr '\n' ' ' | sed 's/ $//')
  others_uids=$(seq $((n_heads + 1)) $((n_heads + n_others)) | sort | tr '\n' ' ' | sed 's/ $//')
  check "mixed study: the $n_heads heads are measured" '[ "$(uids "i[\"status\"] == \"measured\"")" = "$(echo $heads_uids | tr " " "\n" | sort | tr "\n" " " | sed "s/ $//")" ]'
  check "mixed study: the $n_others other planes are listed not_measured, saying why" \
    '[ "$(uids "i[\"status\"] == \"not_measured\" and \"not a fetal head in the HC plane\" in i[\"error\"]")" = "$others_uids" ]'
  for _ in $(seq 1 100); do [ "$(ls "$T/pacs5" | grep -c "^SC\.")" -ge "$n_heads" ] && break; sleep 0.1; done
  sleep 1  # an SR forwarded for a non-head would arrive by now
  check "mixed study: SRs forwarded for the heads only ($(ls "$T/pacs5" | grep -c "^SRc\.") received)" '[ "$(ls "$T/pacs5" | grep -c "^SRc\.")" = "$n_heads" ]'
  check "mixed study: a key image with each ($(ls "$T/pacs5" | grep -c "^SC\.") received), nothing else" \
    '[ "$(ls "$T/pacs5" | grep -c "^SC\.")" = "$n_heads" ] && [ "$(ls "$T/pacs5" | wc -l)" = $((2 * n_heads)) ]'
  check "mixed study: no SR kept for the others" \
    '[ "$(echo "$list" | json "sum(1 for i in d[\"instances\"] if i[\"status\"] == \"not_measured\" and i.get(\"sr_url\"))")" = 0 ]'
fi

if [ "$failures" -ne 0 ]; then
  echo "--- serve.log"; cat "$T/serve.log"; echo "--- serve2.log"; cat "$T/serve2.log"; echo "--- storescu.log"; cat "$T/storescu.log"
  echo "--- serve3.log"; cat "$T/serve3.log"; echo "--- storescu3.log"; cat "$T/storescu3.log"
  echo "--- serve4.log"; cat "$T/serve4.log"; echo "--- storescu4b.log"; cat "$T/storescu4b.log"
  exit 1
fi
echo "dicom_node: all checks passed"
