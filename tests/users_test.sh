#!/usr/bin/env bash
# Users, roles and the audit trail through the real server (issue 26): `fetalhc user add` prints a token once; a
# server whose store holds users needs a user's token on every API route (loopback too); a viewer
# reads but may not measure (403), a sonographer measures; `fetalhc user revoke` takes effect at
# the next request without a restart; the token appears in no file the server writes (database,
# log) nor in any error message; the audit trail (GET /v1/audit for admins, `fetalhc audit export`)
# holds the refusals and the measurement with their request ids.
# Usage: users_test.sh FETALHC MODEL IMAGE. Exit 77: skipped.
set -u
BIN=$1 MODEL=$2 IMAGE=$3
skip() { echo "skip: $*"; exit 77; }
source "$(dirname "$0")/integration_lib.sh"
need_tools curl python3
[ -f "$MODEL" ] || skip "model $MODEL not found"
[ -f "$IMAGE" ] || skip "image $IMAGE not found"

T=$(mktemp -d)
SERVE_PID=
cleanup() { [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
read -r PORT < <(free_ports 1)
URL=http://127.0.0.1:$PORT
DB=$T/f.db

"$BIN" user add sam --role sonographer --db "$DB" >"$T/sam.out" 2>&1
SAM=$(tail -1 "$T/sam.out")
"$BIN" user add vera --role viewer --db "$DB" >"$T/vera.out" 2>&1
VERA=$(tail -1 "$T/vera.out")
"$BIN" user add ada --role admin --db "$DB" >"$T/ada.out" 2>&1
ADA=$(tail -1 "$T/ada.out")
check "user add prints a 256-bit token alone on the last line" '[[ "$SAM" =~ ^fhc_[0-9a-f]{64}$ ]] && [[ "$VERA" =~ ^fhc_[0-9a-f]{64}$ ]]'
"$BIN" user add sam --role admin --db "$DB" >"$T/dup.out" 2>&1
dup_rc=$?
check "user add of a taken name: refused (exit $dup_rc), saying so, no token printed" '[ $dup_rc -ne 0 ] && grep -q "exists" "$T/dup.out" && ! grep -q "fhc_" "$T/dup.out"'

"$BIN" serve --model "$MODEL" --port "$PORT" --db "$DB" >"$T/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 1 150); do curl -sf "$URL/health" >/dev/null && break; sleep 0.2; done
code() { curl -s -o "$T/body" -w "%{http_code}" "$@"; }
check "no token, on loopback: 401" '[ "$(code "$URL/v1/me")" = 401 ] && [ "$(code "$URL/v1/dicom/instances")" = 401 ]'
check "the page and /health stay open" '[ "$(code "$URL/")" = 200 ] && [ "$(code "$URL/health")" = 200 ]'
check "GET /v1/me names the viewer" '[ "$(code -H "Authorization: Bearer $VERA" "$URL/v1/me")" = 200 ] && [ "$(json "d[\"user\"] + \" \" + d[\"role\"]" <"$T/body")" = "vera viewer" ]'
measure() { code -H "Authorization: Bearer $1" -H "X-Fetalhc-Request: 1" -F image=@"$IMAGE" -F pixel_size_mm=0.13 "$URL/v1/measure"; }
check "a viewer may not measure: 403 naming the role needed" '[ "$(measure "$VERA")" = 403 ] && grep -q "sonographer" "$T/body"'
check "a sonographer measures" '[ "$(measure "$SAM")" = 200 ] && grep -q hc_mm "$T/body"'
check "a wrong token: 401, not echoed" '[ "$(code -H "Authorization: Bearer ${SAM}x" "$URL/v1/me")" = 401 ] && ! grep -q "$SAM" "$T/body"'
"$BIN" user revoke vera --db "$DB" >/dev/null 2>&1
check "revoked: refused at the next request, no restart" '[ "$(code -H "Authorization: Bearer $VERA" "$URL/v1/me")" = 401 ] && grep -q revoked "$T/body"'
"$BIN" user rotate sam --db "$DB" >"$T/rot.out" 2>&1
SAM2=$(tail -1 "$T/rot.out")
check "rotated: the old token refused, the new one works" \
  '[ "$(code -H "Authorization: Bearer $SAM" "$URL/v1/me")" = 401 ] && [ "$(code -H "Authorization: Bearer $SAM2" "$URL/v1/me")" = 200 ]'
check "the audit trail over HTTP: an admin reads it, a sonographer may not" \
  '[ "$(code -H "Authorization: Bearer $ADA" "$URL/v1/audit?user=sam")" = 200 ] && [ "$(json "len(d[\"entries\"])" <"$T/body")" -ge 1 ] && [ "$(code -H "Authorization: Bearer $SAM2" "$URL/v1/audit")" = 403 ]'
"$BIN" user list --db "$DB" >"$T/list.out" 2>&1
check "user list: both users, vera revoked, sam last used" 'grep -q "^sam .*sonographer .*Z .*Z *-$" "$T/list.out" && grep -q "^vera .*viewer .*Z$" "$T/list.out"'
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null; SERVE_PID=
"$BIN" audit export --db "$DB" --format csv >"$T/audit.csv" 2>&1
check "audit export: the viewer refused (403) on POST /v1/measure" 'grep -q ",vera,viewer,POST /v1/measure,.*,403," "$T/audit.csv"'
check "audit export: the sonographer's measurement (200) with its image" 'grep -qE ",sam,sonographer,POST /v1/measure,,,[0-9a-f]{64},,200," "$T/audit.csv"'
check "audit export: the refusal without a token (401)" 'grep -q ",unknown,,GET /v1/dicom/instances,.*,401," "$T/audit.csv"'
check "audit export: each entry has its request id (X-Request-Id)" '! cut -d, -f12 "$T/audit.csv" | sed 1d | grep -qv "^[0-9a-f]\{16\}$"'
leaks=0
for tok in "$SAM" "$VERA" "$SAM2"; do
  for f in "$DB" "$T/serve.log" "$T/list.out" "$T/dup.out" "$T/audit.csv"; do grep -aq "${tok#fhc_}" "$f" && leaks=$((leaks + 1)); done
done
check "no token in the database, the server's log or the listing" '[ "$leaks" = 0 ]'
[ "$failures" -gt 0 ] && { echo "--- serve.log"; tail -20 "$T/serve.log"; echo "$failures check(s) failed"; exit 1; }
echo "all user checks passed"
