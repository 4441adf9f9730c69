#!/usr/bin/env bash
# The deployment files (deploy/) against the binary, since Kubernetes and systemd cannot run here:
#  1. deploy/check_manifests.sh passes on deploy/k8s and deploy/systemd (flags in --help, ports,
#     probes answered by a real `serve` with a token, CPU = --threads, the token Secret's mount, the
#     Job's --shard), and fails, naming the problem, on copies with one mistake each (a misspelled
#     flag, a wrong probe path, a CPU request, a port, a mount, the Job's completions, a unit's flag);
#  2. `nginx -t` accepts deploy/nginx/fetalhc.conf (TLS, with a throw-away certificate);
#  3. the retry policy of deploy/nginx, run by nginx against stand-in replicas (a first replica that
#     answers 503, drops the connection after the request, or is not listening; a backup that
#     answers 200): after a dropped connection or a refusal, measurements and keyed exam writes go
#     on to the backup, an exam write without Idempotency-Key only when it never reached a replica;
#     a 503 (a replica shedding load or loading its model) reaches the client with Retry-After and
#     does not take the replica out (the backup, used only once every replica is out, never
#     answers); Host is forwarded; the body limit is serve's --max-upload-mb; /metrics is not
#     published.
#
#   bash tests/deploy_test.sh FETALHC_BINARY SOURCE_DIR
#
# Exit 0 all passed, 1 a check failed, 77 (skip) when jq, yq, curl, nginx or openssl is missing.
set -u
BIN=${1:?usage: bash tests/deploy_test.sh FETALHC_BINARY SOURCE_DIR}
SRC=${2:?usage: bash tests/deploy_test.sh FETALHC_BINARY SOURCE_DIR}
for tool in jq yq curl nginx openssl; do
    command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin command -v "$tool" >/dev/null || {
        echo "SKIP deploy: '$tool' is missing (scripts/setup.sh installs it: apt-get install $tool)"
        exit 77
    }
done
export PATH=$PATH:/usr/sbin
[[ $BIN == /* ]] || BIN=$PWD/$BIN
source "$SRC/tests/deploy_nginx.sh"
T=$(mktemp -d "${TMPDIR:-/tmp}/fetalhc_deploy_test.XXXXXX") || exit 1
chmod 755 "$T"
SERVER_PID=""
cleanup() {
    for d in "$T"/nginx*; do [[ -d $d ]] && nginx_stop "$d"; done
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
FAILED=0
pass() { echo "ok    $1"; }
fail() {
    echo "FAIL  $1: $2"
    FAILED=1
}

# ---- 1. manifests ----------------------------------------------------------------------------------
# One `serve` with a token for every run of the checker (its probe paths are asked of it).
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$T/token"
"$BIN" serve --port 0 --threads 1 --db "$T/probe.db" --token-file "$T/token" >"$T/serve.out" 2>"$T/serve.err" &
SERVER_PID=$!
for _ in $(seq 100); do
    FETALHC_SERVER_URL=$(grep -oE 'http://[0-9.]+:[0-9]+' "$T/serve.out" | head -n 1)
    [[ -n $FETALHC_SERVER_URL ]] && break
    sleep 0.1
done
export FETALHC_SERVER_URL
[[ -n $FETALHC_SERVER_URL ]] || fail "serve" "did not start: $(head -c 300 "$T/serve.err")"

if bash "$SRC/deploy/check_manifests.sh" "$BIN" "$SRC/deploy/k8s" "$SRC/deploy/systemd" >"$T/check.out" 2>&1; then
    pass "deploy/k8s and deploy/systemd agree with the binary"
else
    fail "check_manifests" "$(cat "$T/check.out")"
fi

# mutant NAME FILE SED_EXPR EXPECTED_TEXT: a copy of deploy/ with one edit must be refused with EXPECTED_TEXT.
mutant() {
    local name=$1 file=$2 expr=$3 want=$4 m=$T/mutant
    rm -rf "$m" && mkdir -p "$m" && cp -r "$SRC/deploy/k8s" "$SRC/deploy/systemd" "$m/"
    sed -i -e "$expr" "$m/$file"
    if cmp -s "$m/$file" "$SRC/deploy/$file"; then
        fail "mutant $name" "test bug: '$expr' changed nothing in $file"
        return
    fi
    bash "$SRC/deploy/check_manifests.sh" "$BIN" "$m/k8s" "$m/systemd" >"$T/check.out" 2>&1
    local rc=$?
    if [[ $rc == 1 ]] && grep -qF -- "$want" "$T/check.out"; then pass "refused: $name"
    else fail "mutant $name" "exit $rc, expected 1 with '$want'; output: $(cat "$T/check.out")"; fi
}
mutant "misspelled serve flag" k8s/deployment.yaml 's/- --token-file$/- --token-fil/' "has no option --token-fil"
mutant "misspelled measure flag" k8s/archive-job.yaml 's/--sr-dir/--sr-dri/' "has no option --sr-dri"
mutant "probe path that is no route" k8s/deployment.yaml '0,/path: \/health/s//path: \/healthz/' "probe path /healthz"
mutant "CPU request other than --threads" k8s/deployment.yaml '0,/cpu: "2"/s//cpu: "1500m"/' "CPU request '1500m' is not --threads 2"
mutant "container port other than --port" k8s/deployment.yaml 's/containerPort: 8080/containerPort: 8081/' "no containerPort 8080"
mutant "token Secret mounted elsewhere" k8s/deployment.yaml 's#mountPath: /etc/fetalhc/token#mountPath: /etc/fetalhc/secret#' \
    "is in no mounted volume"
mutant "token key missing from the Secret" k8s/secrets.yaml 's/^  token: /  tokn: /' "needs key 'token' in Secret 'fetalhc-token'"
mutant "loopback --host in the cluster" k8s/deployment.yaml 's/- 0\.0\.0\.0$/- 127.0.0.1/' "--host 127.0.0.1 is loopback"
mutant "Job completions other than the shard count" k8s/archive-job.yaml 's/completions: 8/completions: 6/' "is not spec.completions (6)"
mutant "database password key missing from its Secret" k8s/secrets.yaml 's/^  password: /  passwd: /' \
    "env refers to key 'password' of Secret 'fetalhc-db'"
mutant "autoscaler aimed at no Deployment" k8s/hpa.yaml '/kind: Deployment/{n;s/name: fetalhc/name: fetalhc-web/}' "scales 'fetalhc-web'"
mutant "Service port that no container has" k8s/service.yaml 's/targetPort: http/targetPort: web/' "targetPort 'web'"
mutant "misspelled unit flag" systemd/fetalhc@.service 's/--allow-origin/--allow-orign/' "has no option --allow-orign"
if command -v systemd-analyze >/dev/null; then
    mutant "misspelled unit setting" systemd/fetalhc.service 's/^ProtectSystem=/ProtectSytem=/' "Unknown key"
fi

# ---- 2. the TLS site as shipped ---------------------------------------------------------------------
S=$T/nginx_site
mkdir -p "$S" && chmod 755 "$S"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=fetalhc.example.org -keyout "$S/site.key" -out "$S/site.pem" \
    >/dev/null 2>&1
# nginx -t binds the listening sockets: ports 80 and 443 become free loopback ports (IPv6 may be
# absent in a container: its listen lines are dropped); paths point into $S.
HTTP_PORT=$(free_port)
HTTPS_PORT=$(free_port)
sed -e "s#/etc/nginx/fetalhc/#$S/#g" -e "s#/etc/ssl/certs/fetalhc.example.org.pem#$S/site.pem#" \
    -e "s#/etc/ssl/private/fetalhc.example.org.key#$S/site.key#" -e "s#/var/log/nginx/#$S/#" \
    -e '/^ *listen \[::\]:/d' -e "s/^\( *listen \)80;/\1127.0.0.1:$HTTP_PORT;/" \
    -e "s/^\( *listen \)443 /\1127.0.0.1:$HTTPS_PORT /" "$SRC/deploy/nginx/fetalhc.conf" >"$S/fetalhc.conf"
grep -qE '^ *listen (80|443)[; ]' "$S/fetalhc.conf" && fail "nginx -t" "test bug: a listen line of fetalhc.conf was not moved"
cp "$SRC/deploy/nginx/fetalhc-upstream.conf" "$SRC/deploy/nginx/fetalhc-proxy.conf" "$S/"
cat >"$S/nginx.conf" <<EOF
pid $S/nginx.pid;
events {}
http {
    access_log $S/access.log;
    client_body_temp_path $S/client_body; proxy_temp_path $S/proxy; fastcgi_temp_path $S/fastcgi;
    uwsgi_temp_path $S/uwsgi; scgi_temp_path $S/scgi;
    include $S/fetalhc.conf;
}
EOF
if nginx -t -q -p "$S" -e "$S/error.log" -c "$S/nginx.conf" >"$T/nginx_t.out" 2>&1; then pass "nginx -t accepts deploy/nginx/fetalhc.conf"
else fail "nginx -t" "$(cat "$T/nginx_t.out")"; fi
rm -f "$S/nginx.pid"
# The single sign-on variant (fetalhc-sso.conf, issue 26) in the same site, in place of the proxy part.
echo 'set $fetalhc_proxy_secret "0123456789abcdef0123456789abcdef";' >"$S/proxy-secret.conf"
sed -e "s#/etc/nginx/fetalhc/#$S/#g" "$SRC/deploy/nginx/fetalhc-sso.conf" >"$S/fetalhc-sso.conf"
sed -e "s#include $S/fetalhc-proxy.conf;#include $S/fetalhc-sso.conf;#" "$S/fetalhc.conf" >"$S/fetalhc-with-sso.conf"
sed -e "s#include $S/fetalhc.conf;#include $S/fetalhc-with-sso.conf;#" "$S/nginx.conf" >"$S/nginx-sso.conf"
if grep -q "fetalhc-sso.conf" "$S/fetalhc-with-sso.conf" && nginx -t -q -p "$S" -e "$S/error.log" -c "$S/nginx-sso.conf" >"$T/nginx_sso.out" 2>&1
then pass "nginx -t accepts deploy/nginx/fetalhc-sso.conf in the site"
else fail "nginx -t (sso)" "$(cat "$T/nginx_sso.out" 2>/dev/null) (fetalhc.conf includes the proxy part: $(grep -c fetalhc-proxy.conf "$S/fetalhc.conf"))"; fi
rm -f "$S/nginx.pid"

# ---- 3. the retry policy, against stand-in replicas -------------------------------------------------
LISTEN=$(free_port)
BAD=$(free_port)
GOOD=$(free_port)
default_mb=$("$BIN" serve --help | sed -nE 's/^ +--max-upload-mb FLOAT=([0-9.]+).*/\1/p')
if grep -qE "^client_max_body_size ${default_mb}m;" "$SRC/deploy/nginx/fetalhc-proxy.conf"; then
    pass "nginx's body limit is serve's --max-upload-mb default (${default_mb} MiB)"
else
    fail "body limit" "fetalhc-proxy.conf's client_max_body_size is not ${default_mb}m (serve --max-upload-mb)"
fi

# request NAME WANT_CODE METHOD PATH [CURL_ARGS...]: through nginx; a 200 must come from the backup
# with the client's Host, a 503 must carry Retry-After.
request() {
    local name=$1 want=$2 method=$3 path=$4 code
    shift 4
    code=$(curl -s -o "$T/body" -D "$T/headers" -w '%{http_code}' -X "$method" -H 'Content-Type: application/json' "$@" \
        "http://127.0.0.1:$LISTEN$path")
    if [[ $code != "$want" ]]; then
        fail "$name" "HTTP $code, expected $want; body: $(head -c 200 "$T/body")"
    elif [[ $want == 200 ]] && ! grep -qx "good host=127.0.0.1:$LISTEN" "$T/body"; then
        fail "$name" "answered by '$(head -c 200 "$T/body")', expected the backup replica with Host 127.0.0.1:$LISTEN"
    elif [[ $want == 503 ]] && ! grep -qiE '^Retry-After: [0-9]+' "$T/headers"; then
        fail "$name" "a 503 without Retry-After"
    else
        pass "$name: $want"
    fi
}

# policy KIND MEASURE EXAM EXAM_KEYED HEALTH: the first replica answers 503, drops the connection
# once it has the request (444: nginx closes without answering, as a replica killed mid-request), or
# is not listening (refused); the expected status of each request class.
policy() {
    local kind=$1 measure=$2 exam=$3 keyed=$4 health=$5 dir=$T/nginx_$1 extra max_fails=0
    # A 503 must not count as a failed attempt: with max_fails=1, one that did would send every later
    # request to the backup.
    [[ $kind == 503 ]] && max_fails=1
    extra="    server { listen 127.0.0.1:$GOOD; access_log off; location / { return 200 \"good host=\$http_host\\n\"; } }"
    [[ $kind == refused ]] || extra+=$'\n'"    server { listen 127.0.0.1:$BAD; access_log off; location / { return $kind; } }"
    nginx_conf "$dir" "$SRC/deploy/nginx" "$LISTEN" \
        "    server 127.0.0.1:$BAD max_fails=$max_fails fail_timeout=60s;"$'\n'"    server 127.0.0.1:$GOOD backup;" "$extra"
    if ! nginx_start "$dir" 2>"$T/nginx_start.err"; then
        fail "nginx ($kind)" "did not start: $(cat "$T/nginx_start.err") $(tail -n 5 "$dir/error.log" 2>/dev/null)"
        return
    fi
    request "first replica $kind: POST /v1/measure" "$measure" POST /v1/measure --data '{}'
    request "first replica $kind: POST /v1/segment" "$measure" POST /v1/segment --data '{}'
    request "first replica $kind: POST /v1/exams without Idempotency-Key" "$exam" POST /v1/exams --data '{}'
    request "first replica $kind: POST /v1/exams with Idempotency-Key" "$keyed" POST /v1/exams -H 'Idempotency-Key: k-1' --data '{}'
    request "first replica $kind: GET /health" "$health" GET /health
    if [[ $kind == 503 ]]; then
        if grep -q "temporarily disabled" "$dir/error.log"; then
            fail "first replica 503" "nginx took the replica out: $(grep -m 1 "temporarily disabled" "$dir/error.log")"
        else
            pass "first replica 503: still in the pool after 5 answers with 503 (max_fails=1)"
        fi
        request "GET /metrics is not published" 404 GET /metrics
        head -c $((default_mb * 1048576 + 1)) /dev/zero >"$T/big"
        request "a body over ${default_mb} MiB" 413 POST /v1/measure --data-binary "@$T/big"
    fi
    nginx_stop "$dir"
}
policy 503 503 503 503 503
policy 444 200 502 200 200
policy refused 200 200 200 200

((FAILED)) && { echo "deploy: some checks failed"; exit 1; }
echo "deploy: all checks passed"
