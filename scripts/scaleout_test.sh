#!/usr/bin/env bash
# Scale-out under failure: a throw-away PostgreSQL, 3 `fetalhc serve` replicas sharing it and nginx
# with the deploy configuration (deploy/nginx, ports substituted), all on loopback. The load
# benchmark runs through nginx with exam writes (each under an Idempotency-Key); one replica is
# killed with SIGKILL mid-run. Then:
#   - what clients got, from load_measure's figures and nginx's access log (each response's status,
#     the replicas tried and the Retry-After sent): no error but 503 `overloaded` with Retry-After,
#     a replica's own shed, which nginx sends once more to the next replica and then passes to the
#     client, never counting it against a replica. nginx passes what the killed replica lost on to
#     another, so even the 502/504 a client may retry (README, "Deploying") must not reach it; with
#     ALLOW_KILLED_502=1 a 502 that only the killed replica answered is counted instead (any other
#     502, "no live upstreams" included, fails). Exam writes the benchmark itself retried (same
#     Idempotency-Key) are counted, not errors;
#   - every acknowledged exam (`--acked`: key,id) is in PostgreSQL exactly once, under its id;
#   - the figures: served req/s, p50/p99, errors by kind, exams acknowledged/found, requests nginx
#     sent to a second replica.
#
#   bash scripts/scaleout_test.sh FETALHC_BINARY LOAD_MEASURE_BINARY SOURCE_DIR [SECONDS] [CLIENTS]
#
# Environment, all optional (without it: 6 clients for 40 s, the replicas' default flags):
#   CLIENTS=N DURATION=S  as the arguments (an argument wins)
#   SERVE_ARGS="..."      more `serve` flags for every replica, e.g. SERVE_ARGS="--max-queue-ms 100"
#   BASELINE_CLIENTS=N    first a baseline run of the same length, with the same kill, N clients and
#                         the replicas' default flags (no SERVE_ARGS), on fresh replicas and nginx
#                         (same PostgreSQL); the main run must then serve at least MIN_RATIO
#   MIN_RATIO=R           (default 0.8) times the baseline's req/s. Both are measured in this one
#                         invocation, so a machine busy with something else slows both.
#   ALLOW_KILLED_502=1    see above
# CTest runs `scaleout` (the defaults) and `scaleout_shed` (SERVE_ARGS="--max-queue-ms 100"
# CLIENTS=24 BASELINE_CLIENTS=6 ALLOW_KILLED_502=1: shedding behind nginx must not become an outage).
#
# Exit 0 passed, 1 failed, 77 (skip, with the reason) without nginx, PostgreSQL's server binaries,
# PostgreSQL support in fetalhc (`serve --db postgresql://...`) or load_measure's --url/--exam-writes/
# --acked. As root, PostgreSQL runs as the `postgres` user (it refuses root).
set -u
USAGE="usage: [CLIENTS=N] [SERVE_ARGS=...] [BASELINE_CLIENTS=N] bash scripts/scaleout_test.sh FETALHC_BINARY LOAD_MEASURE SOURCE_DIR [SECONDS] [CLIENTS]"
BIN=${1:?$USAGE}
LOAD=${2:?$USAGE}
SRC=${3:?$USAGE}
DURATION=${4:-${DURATION:-40}}
CLIENTS=${5:-${CLIENTS:-6}}
SERVE_ARGS=${SERVE_ARGS:-}
BASELINE_CLIENTS=${BASELINE_CLIENTS:-}
MIN_RATIO=${MIN_RATIO:-0.8}
ALLOW_KILLED_502=${ALLOW_KILLED_502:-0}
for v in DURATION CLIENTS BASELINE_CLIENTS; do
    [[ -z ${!v} && $v == BASELINE_CLIENTS ]] || [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "scaleout: $v must be a positive integer, not '${!v}'"; exit 1; }
done
[[ $ALLOW_KILLED_502 == [01] ]] || { echo "scaleout: ALLOW_KILLED_502 must be 0 or 1, not '$ALLOW_KILLED_502'"; exit 1; }
[[ $MIN_RATIO =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "scaleout: MIN_RATIO must be a number, not '$MIN_RATIO'"; exit 1; }
read -r -a SERVE_EXTRA <<<"$SERVE_ARGS"
export PATH=$PATH:/usr/sbin
skip() {
    echo "SKIP scaleout: $*"
    exit 77
}
command -v nginx >/dev/null || skip "nginx is missing (apt-get install nginx)"
for tool in curl psql jq; do command -v "$tool" >/dev/null || skip "$tool is missing (apt-get install ${tool/psql/postgresql-client})"; done
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[[ -n $PGBIN && -x $PGBIN/initdb && -x $PGBIN/pg_ctl ]] || skip "PostgreSQL's server binaries are missing (apt-get install postgresql)"
[[ $(id -u) != 0 ]] || id postgres >/dev/null 2>&1 || skip "running as root, but there is no 'postgres' user to run PostgreSQL as"
[[ -x $BIN ]] || skip "no fetalhc binary at '$BIN'"
"$BIN" serve --help 2>/dev/null | grep -q 'postgresql://' || skip "this fetalhc has no PostgreSQL support (serve --db postgresql://...)"
[[ -x $LOAD ]] || skip "no load benchmark at '$LOAD' (build the load_measure target)"
for flag in --url --exam-writes --acked --json-out; do
    "$LOAD" --help 2>/dev/null | grep -q -- "$flag" || skip "load_measure has no $flag option"
done
source "$SRC/tests/deploy_nginx.sh"

T=$(mktemp -d "${TMPDIR:-/tmp}/fetalhc_scaleout.XXXXXX") || exit 1
chmod 755 "$T"  # PostgreSQL (as postgres) and nginx's workers (as nobody) work in here
REPLICA_PIDS=()  # the replicas of the current run; ALL_PIDS: of every run
ALL_PIDS=()
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    local d pid
    for d in "$T"/*/nginx; do [[ -d $d ]] && nginx_stop "$d"; done
    for pid in "${ALL_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${ALL_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    [[ -f $T/pg/postmaster.pid ]] && as_pg "$PGBIN/pg_ctl" -D "$T/pg" -m immediate stop >/dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT
die() {
    echo "FAIL scaleout: $*"
    exit 1
}

# ---- PostgreSQL: a cluster in $T, reached only through its socket in $T/sock ------------------------
start_postgres() {
    mkdir -p "$T/pg" "$T/sock"
    [[ $(id -u) == 0 ]] && chown postgres "$T/pg" "$T/sock"
    as_pg "$PGBIN/initdb" -D "$T/pg" -U postgres --auth=trust -E UTF8 >"$T/initdb.log" 2>&1 ||
        die "initdb failed: $(tail -n 5 "$T/initdb.log")"
    PGPORT=$(free_port)
    as_pg "$PGBIN/pg_ctl" -D "$T/pg" -l "$T/sock/pg.log" -w -t 60 \
        -o "-k $T/sock -c listen_addresses='' -p $PGPORT -c fsync=off -c max_connections=100" start >/dev/null ||
        die "PostgreSQL did not start: $(tail -n 5 "$T/sock/pg.log")"
    psql_admin -c "CREATE ROLE fetalhc LOGIN" -c "CREATE DATABASE fetalhc OWNER fetalhc" >/dev/null ||
        die "cannot create the fetalhc role and database"
    DB_URI="postgresql://fetalhc@/fetalhc?host=$T/sock&port=$PGPORT"
}
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -h "$T/sock" -p "$PGPORT" -U postgres -d postgres "$@"; }
psql_app() { psql -X -q -At -F, -v ON_ERROR_STOP=1 -h "$T/sock" -p "$PGPORT" -U fetalhc -d fetalhc "$@"; }

# ---- replicas and nginx --------------------------------------------------------------------------------
TAKEN=" "
# new_port VAR: VAR = a free loopback port that this script has not handed out yet.
new_port() {
    local p
    for _ in $(seq 20); do
        p=$(free_port) || break
        [[ $TAKEN == *" $p "* ]] && continue
        TAKEN+="$p "
        printf -v "$1" '%s' "$p"
        return 0
    done
    die "no free port"
}
# start_replicas DIR [SERVE_FLAGS...]: 3 replicas, their logs in DIR.
start_replicas() {
    local dir=$1 i port
    shift
    new_port LISTEN
    PORTS=()
    REPLICA_PIDS=()
    for i in 1 2 3; do
        new_port port
        PORTS+=("$port")
        "$BIN" serve --host 127.0.0.1 --port "$port" --threads 1 --db "$DB_URI" --allow-origin "http://127.0.0.1:$LISTEN" \
            --max-connections-per-client 0 "$@" >"$dir/replica$i.log" 2>&1 &
        REPLICA_PIDS+=($!)
        ALL_PIDS+=($!)
    done
    for i in 0 1 2; do wait_ready "${PORTS[$i]}" "$dir/replica$((i + 1)).log" "${REPLICA_PIDS[$i]}"; done
}
wait_ready() {
    local port=$1 log=$2 pid=$3 code
    for _ in $(seq 240); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")
        [[ $code == 200 ]] && return 0
        kill -0 "$pid" 2>/dev/null || die "the replica on port $port exited: $(tail -n 5 "$log")"
        sleep 0.5
    done
    die "the replica on port $port was not ready within 120 s (last /health: $code): $(tail -n 5 "$log")"
}
# warm_replicas DIR: a few measurements on each replica before the load. A fresh replica's first
# inference takes seconds (LibTorch's first run), and one with a short --max-queue-ms sheds all it is
# sent meanwhile and for a while after (its wait estimate counts that first run): the runs compare
# warm replicas, as a deployment has once it took its first requests.
warm_replicas() {
    local i pids=()
    for i in 0 1 2; do
        "$LOAD" --url "127.0.0.1:${PORTS[$i]}" --clients 1 --duration 3 --json-out "$1/warm$((i + 1)).json" >"$1/warm$((i + 1)).out" 2>&1 &
        pids+=($!)
    done
    for i in 0 1 2; do
        wait "${pids[$i]}" && [[ $(jq '.served' "$1/warm$((i + 1)).json" 2>/dev/null) -gt 0 ]] ||
            die "warming the replica on port ${PORTS[$i]} failed: $(tail -n 3 "$1/warm$((i + 1)).out")"
    done
}
stop_replicas() {
    local pid
    for pid in "${REPLICA_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${REPLICA_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
}
# start_nginx DIR: nginx in DIR/nginx in front of the current replicas.
start_nginx() {
    nginx_conf "$1/nginx" "$SRC/deploy/nginx" "$LISTEN" "$(deploy_replica_lines "$SRC/deploy/nginx" "${PORTS[@]}")"
    nginx_start "$1/nginx" 2>"$T/nginx_start.err" || die "nginx did not start: $(cat "$T/nginx_start.err")"
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$LISTEN/health")
    [[ $code == 200 ]] || die "GET /health through nginx answered $code"
}

# ---- checks ---------------------------------------------------------------------------------------------
FAILED=0
check_fail() {
    echo "FAIL  $*"
    FAILED=1
}
psql_app_ok() { psql_app "$@" || die "cannot read the exams from PostgreSQL"; }

# check_run NAME DIR CLIENTS: the checks and figures of one run (DIR/load.json, DIR/acked.csv,
# DIR/nginx/access.log); sets SERVED_PER_S.
check_run() {
    local name=$1 dir=$2 clients=$3 log=$2/nginx/access.log victim="127.0.0.1:$VICTIM_PORT"
    local served bad allowed n503 no_retry_after killed_502 other_502 other_status
    served=$(jq '.served' "$dir/load.json")
    SERVED_PER_S=$(jq '.served_per_s' "$dir/load.json")
    ((served > 0)) || check_fail "[$name] no request was served"
    # load_measure's view: 503 `overloaded` is counted apart (shed); any other error kind is a
    # failure, but a 502 when ALLOW_KILLED_502=1 (nginx's log below says which replica gave it).
    # Its own retries of an exam write (after a 502/503, same key) are figures, not errors; an exam
    # write still failing after them is an error kind ("exam write: ...") like any other.
    allowed='^$'
    ((ALLOW_KILLED_502)) && allowed='^(exam write: )?HTTP 502 '
    # An answer the killed replica was writing at the SIGKILL is lost: nginx had begun reading it and
    # cannot pass the request on. The client sees no response; as many such losses as nginx's error
    # log shows truncated answers from the killed replica are expected, no more.
    local truncated
    truncated=$(grep -c "upstream prematurely closed connection while reading upstream.*upstream: \"http://$victim/" \
        "$dir/nginx/error.log" 2>/dev/null)
    bad=$(jq -r --arg ok "$allowed" --argjson cut "${truncated:-0}" '.error_kinds | to_entries[] | select(.key | test($ok) | not)
        | select(((.key | test("^(exam write: )?no response")) and .value <= $cut) | not)
        | "\(.value) x \(.key | gsub("\\s+"; " "))"' "$dir/load.json")
    ((truncated > 0)) && echo "  nginx: $truncated answer(s) of the killed replica cut off mid-answer by the SIGKILL (lost, allowed)"
    [[ -z $bad ]] || check_fail "[$name] client errors other than 503 overloaded: $bad"
    # nginx's view of every answer a client got (fields split on '"': $3 status ..., $4 replicas
    # tried, $8 Retry-After sent): a 503 carries Retry-After; a 502 came from the killed replica
    # alone; nothing else is 4xx/5xx.
    read -r n503 no_retry_after killed_502 other_502 other_status < <(awk -F'"' -v victim="$victim" '
        { split($3, f, " "); st = f[1] + 0 }
        st == 503 { n503++; if ($8 !~ /^[0-9]+$/) nora++; next }
        st == 502 { k = split($4, u, /(, | : )/); only = k > 0; for (i = 1; i <= k; i++) if (u[i] != victim) only = 0
                    if (only) kv++; else o++; next }
        st >= 400 { other++ }
        END { printf "%d %d %d %d %d\n", n503, nora, kv, o, other }' "$log")
    ((no_retry_after == 0)) || check_fail "[$name] $no_retry_after of the $n503 503s reached the client without Retry-After"
    ((other_502 == 0)) || check_fail "[$name] $other_502 502s reached the client from nginx itself or a live replica:" \
        "$(awk -F'"' '{ split($3, f, " ") } f[1] == 502 { print "\"" $4 "\" \"" $6 "\"" }' "$log" | sort | uniq -c | sort -rn | head -n 3 | paste -sd ';' -)"
    ((ALLOW_KILLED_502 || killed_502 == 0)) || check_fail "[$name] $killed_502 502s from the killed replica reached the client"
    ((other_status == 0)) || check_fail "[$name] $other_status answers with another 4xx/5xx status reached the client"

    # acked.csv: key,id per acknowledged exam (ids as JSON: a number, or a quoted string).
    local acked found missing wrong passed_on to_victim sent_again sent_again_ok
    read -r acked found missing wrong < <(awk -F, '
        NR == FNR { n[$1]++; id[$1] = $2; next }
        { gsub(/"/, "", $2); acked++; if (!($1 in n)) missing++; else if (n[$1] != 1 || id[$1] != $2) wrong++; else found++ }
        END { printf "%d %d %d %d\n", acked, found, missing, wrong }' "$T/db.csv" "$dir/acked.csv")
    ((missing == 0)) || check_fail "[$name] $missing acknowledged exams are not in the database"
    ((wrong == 0)) || check_fail "[$name] $wrong acknowledged exams are there under another id or more than once"
    ((acked > 0)) || check_fail "[$name] no exam write was acknowledged"

    # "$upstream_status" lists every replica tried ("502, 200" = passed on to another; "503 : 200" =
    # shed by one, sent once more from @fetalhc_sent_again and served by another).
    passed_on=$(grep -cE '"[0-9]{3}(, [0-9]{3})+"' "$log")
    read -r sent_again sent_again_ok < <(awk -F'"' '$6 ~ /503 : / { n++; split($3, f, " "); if (f[1] == 200) ok++ }
        END { printf "%d %d\n", n, ok }' "$log")
    to_victim=$(grep -c "$victim" "$log")
    echo "scaleout figures [$name] (3 replicas x --threads 1${RUN_FLAGS:+ $RUN_FLAGS}, nginx, PostgreSQL; $clients clients, ${DURATION} s, replica 2 killed at ${KILL_AT} s):"
    jq -r '"  served \(.served) (\(.served_per_s * 10 | round / 10) req/s), shed \(.shed) (503 overloaded), other errors \(.errors)",
           "  latency of served requests: p50 \(.served_ms.p50 | round) ms, p99 \(.served_ms.p99 | round) ms, max \(.served_ms.max | round) ms",
           (.error_kinds | to_entries[] | "  error x\(.value): \(.key | gsub("\\s+"; " "))"),
           "  exam writes: \(.exams.acked) acknowledged, \(.exams.retries) retried by the client, \(.exams.failed) failed"' "$dir/load.json"
    echo "  exams acknowledged $acked, found exactly once $found, missing $missing, wrong $wrong"
    echo "  nginx: 503 to the client $n503 ($no_retry_after without Retry-After); 502 to the client $((killed_502 + other_502))" \
        "($killed_502 from the killed replica alone, $other_502 other); other 4xx/5xx $other_status"
    echo "  nginx: $to_victim requests went to the killed replica; $passed_on passed on to another replica (replica statuses:" \
        "$(grep -oE '"[0-9]{3}(, [0-9]{3})+"' "$log" | sort | uniq -c | awk '{ $1 = $1 "x"; print }' | paste -sd ';' -))"
    echo "  nginx: $sent_again measurements shed by one replica were sent once more, $sent_again_ok of them served"
}

# ---- one run --------------------------------------------------------------------------------------------
KILL_AT=$((DURATION * 2 / 5))
# run NAME CLIENTS [SERVE_FLAGS...]: fresh replicas and nginx in $T/NAME, the load through nginx,
# replica 2 killed at KILL_AT; then nginx and the replicas are stopped and the run checked.
run() {
    local name=$1 clients=$2 dir=$T/$1 rc
    shift 2
    RUN_FLAGS="$*"
    mkdir -p "$dir" && chmod 755 "$dir"
    start_replicas "$dir" "$@"
    warm_replicas "$dir"
    start_nginx "$dir"
    echo "scaleout [$name]: replicas on 127.0.0.1:${PORTS[*]} (serve flags: ${RUN_FLAGS:-the defaults}); nginx on 127.0.0.1:$LISTEN"
    echo "scaleout [$name]: ${DURATION} s of load from $clients clients, half the measurements followed by an exam write"
    "$LOAD" --url "127.0.0.1:$LISTEN" --clients "$clients" --duration "$DURATION" --exam-writes 0.5 --acked "$dir/acked.csv" \
        --json-out "$dir/load.json" >"$dir/load.out" 2>&1 &
    local load_pid=$!
    sleep "$KILL_AT"
    VICTIM_PORT=${PORTS[1]}
    kill -9 "${REPLICA_PIDS[1]}"
    wait "${REPLICA_PIDS[1]}" 2>/dev/null
    echo "scaleout [$name]: killed replica 2 (127.0.0.1:$VICTIM_PORT) with SIGKILL ${KILL_AT} s into the run"
    wait "$load_pid"
    rc=$?
    sed 's/^/  | /' "$dir/load.out"
    nginx_stop "$dir/nginx"
    stop_replicas
    [[ -s $dir/load.json ]] || die "[$name] load_measure wrote no figures (exit $rc)"
    psql_app_ok -c "SELECT idempotency_key, id FROM exams" >"$T/db.csv"
    check_run "$name" "$dir" "$clients"
}

# ---- the runs ---------------------------------------------------------------------------------------------
start_postgres
echo "scaleout: PostgreSQL on $T/sock port $PGPORT"
if [[ -n $BASELINE_CLIENTS ]]; then
    run baseline "$BASELINE_CLIENTS"
    BASELINE_PER_S=$SERVED_PER_S
fi
run main "$CLIENTS" "${SERVE_EXTRA[@]}"

psql_app_ok -c "SELECT idempotency_key, count(*) FROM exams WHERE idempotency_key IS NOT NULL GROUP BY 1 HAVING count(*) > 1" >"$T/dupes.csv"
dupes=$(head -n 5 "$T/dupes.csv")
[[ -z $dupes ]] || check_fail "exams saved more than once under one key: $dupes"
unacked=$(cat "$T"/*/acked.csv | awk -F, 'NR == FNR { a[$1] = 1; next } !($1 in a)' - "$T/db.csv" | wc -l)
echo "scaleout: exams saved but never acknowledged (all runs): $unacked"
if [[ -n $BASELINE_CLIENTS ]]; then
    ratio=$(awk -v a="$SERVED_PER_S" -v b="$BASELINE_PER_S" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
    echo "scaleout: throughput $CLIENTS clients${SERVE_ARGS:+ ($SERVE_ARGS)} / $BASELINE_CLIENTS clients (defaults):" \
        "$(printf '%.1f / %.1f' "$SERVED_PER_S" "$BASELINE_PER_S") req/s = $ratio (at least $MIN_RATIO)"
    awk -v r="$ratio" -v m="$MIN_RATIO" 'BEGIN { exit !(r >= m) }' ||
        check_fail "served $ratio x the baseline's throughput, under $MIN_RATIO"
fi
if ((FAILED)); then
    echo "scaleout: FAILED (logs: replicas, nginx and PostgreSQL below)"
    tail -n 5 "$T"/*/replica*.log "$T"/*/nginx/error.log "$T/sock/pg.log" 2>/dev/null
    exit 1
fi
echo "scaleout: passed"
