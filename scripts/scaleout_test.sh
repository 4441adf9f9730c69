#!/usr/bin/env bash
# Scale-out under failure: a throw-away PostgreSQL, 3 `fetalhc serve` replicas sharing it and nginx
# with the deploy configuration (deploy/nginx, ports substituted), all on loopback. The load
# benchmark runs through nginx with exam writes (each under an Idempotency-Key); one replica is
# killed with SIGKILL mid-run. Then:
#   - no client error but the retryable 503 `overloaded` (with Retry-After; the benchmark counts these
#     as shed): nginx passes what the killed replica lost on to another, so even the 502/504 a client
#     may retry (README, "Deploying") must not reach it; exam writes the benchmark itself retried
#     (same Idempotency-Key) are counted, not errors;
#   - every acknowledged exam (`--acked`: key,id) is in PostgreSQL exactly once, under its id;
#   - the figures: served req/s, p50/p99, errors by kind, exams acknowledged/found, requests nginx
#     sent to a second replica.
#
#   bash scripts/scaleout_test.sh FETALHC_BINARY LOAD_MEASURE_BINARY SOURCE_DIR [SECONDS] [CLIENTS]
#
# Exit 0 passed, 1 failed, 77 (skip, with the reason) without nginx, PostgreSQL's server binaries,
# PostgreSQL support in fetalhc (`serve --db postgresql://...`) or load_measure's --url/--exam-writes/
# --acked. As root, PostgreSQL runs as the `postgres` user (it refuses root).
set -u
BIN=${1:?usage: bash scripts/scaleout_test.sh FETALHC_BINARY LOAD_MEASURE SOURCE_DIR [SECONDS] [CLIENTS]}
LOAD=${2:?usage: bash scripts/scaleout_test.sh FETALHC_BINARY LOAD_MEASURE SOURCE_DIR [SECONDS] [CLIENTS]}
SRC=${3:?usage: bash scripts/scaleout_test.sh FETALHC_BINARY LOAD_MEASURE SOURCE_DIR [SECONDS] [CLIENTS]}
DURATION=${4:-40}
CLIENTS=${5:-6}
export PATH=$PATH:/usr/sbin
skip() {
    echo "SKIP scaleout: $*"
    exit 77
}
command -v nginx >/dev/null || skip "nginx is missing (apt-get install nginx)"
for tool in curl psql; do command -v "$tool" >/dev/null || skip "$tool is missing (apt-get install ${tool/psql/postgresql-client})"; done
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
REPLICA_PIDS=()
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    nginx_stop "$T/nginx"
    for pid in "${REPLICA_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${REPLICA_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
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
start_replicas() {
    local i port
    LISTEN=$(free_port)
    PORTS=()
    for i in 1 2 3; do
        port=$(free_port)
        PORTS+=("$port")
        "$BIN" serve --host 127.0.0.1 --port "$port" --threads 1 --db "$DB_URI" --allow-origin "http://127.0.0.1:$LISTEN" \
            --max-connections-per-client 0 >"$T/replica$i.log" 2>&1 &
        REPLICA_PIDS+=($!)
    done
    for i in 0 1 2; do wait_ready "${PORTS[$i]}" "$T/replica$((i + 1)).log"; done
}
wait_ready() {
    local port=$1 log=$2 code
    for _ in $(seq 240); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")
        [[ $code == 200 ]] && return 0
        sleep 0.5
    done
    die "the replica on port $port was not ready within 120 s (last /health: $code): $(tail -n 5 "$log")"
}
start_nginx() {
    nginx_conf "$T/nginx" "$SRC/deploy/nginx" "$LISTEN" "$(deploy_replica_lines "$SRC/deploy/nginx" "${PORTS[@]}")"
    nginx_start "$T/nginx" 2>"$T/nginx_start.err" || die "nginx did not start: $(cat "$T/nginx_start.err")"
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$LISTEN/health")
    [[ $code == 200 ]] || die "GET /health through nginx answered $code"
}

# ---- the run --------------------------------------------------------------------------------------------
start_postgres
start_replicas
start_nginx
echo "scaleout: PostgreSQL on $T/sock port $PGPORT; replicas on 127.0.0.1:${PORTS[*]}; nginx on 127.0.0.1:$LISTEN"
echo "scaleout: ${DURATION} s of load from $CLIENTS clients, half the measurements followed by an exam write"
"$LOAD" --url "127.0.0.1:$LISTEN" --clients "$CLIENTS" --duration "$DURATION" --exam-writes 0.5 --acked "$T/acked.csv" \
    --json-out "$T/load.json" >"$T/load.out" 2>&1 &
LOAD_PID=$!
KILL_AT=$((DURATION * 2 / 5))
sleep "$KILL_AT"
VICTIM_PORT=${PORTS[1]}
kill -9 "${REPLICA_PIDS[1]}"
wait "${REPLICA_PIDS[1]}" 2>/dev/null
echo "scaleout: killed replica 2 (127.0.0.1:$VICTIM_PORT) with SIGKILL ${KILL_AT} s into the run"
wait "$LOAD_PID"
LOAD_RC=$?
sed 's/^/  | /' "$T/load.out"
[[ -s $T/load.json ]] || die "load_measure wrote no figures (exit $LOAD_RC)"

# ---- checks ---------------------------------------------------------------------------------------------
FAILED=0
check_fail() {
    echo "FAIL  $*"
    FAILED=1
}
served=$(jq '.served' "$T/load.json")
((served > 0)) || check_fail "no request was served"
# With two replicas left, nginx passes every request the killed one lost on to another: a client
# may see 503 `overloaded` (shed, counted apart) and nothing else. The benchmark's own retries of an
# exam write (after a 502/503, same key) are figures, not errors; an exam write still failing after
# them is an error kind ("exam write: ...") like any other.
bad=$(jq -r '.error_kinds | to_entries[] | "\(.value) x \(.key | gsub("\\s+"; " "))"' "$T/load.json")
[[ -z $bad ]] || check_fail "client errors other than 503 overloaded: $bad"

psql_app -c "SELECT idempotency_key, id FROM exams" >"$T/db.csv" || die "cannot read the exams from PostgreSQL"
dupes=$(psql_app -c "SELECT idempotency_key, count(*) FROM exams WHERE idempotency_key IS NOT NULL GROUP BY 1 HAVING count(*) > 1")
[[ -z $dupes ]] || check_fail "exams saved more than once under one key: $dupes"
# acked.csv: key,id per acknowledged exam (ids as JSON: a number, or a quoted string).
read -r acked found missing wrong < <(awk -F, '
    NR == FNR { n[$1]++; id[$1] = $2; next }
    { gsub(/"/, "", $2); acked++; if (!($1 in n)) missing++; else if (n[$1] != 1 || id[$1] != $2) wrong++; else found++ }
    END { printf "%d %d %d %d\n", acked, found, missing, wrong }' "$T/db.csv" "$T/acked.csv")
((missing == 0)) || check_fail "$missing acknowledged exams are not in the database"
((wrong == 0)) || check_fail "$wrong acknowledged exams are there under another id or more than once"
((acked > 0)) || check_fail "no exam write was acknowledged"
unacked=$(awk -F, 'NR == FNR { a[$1] = 1; next } !($1 in a)' "$T/acked.csv" "$T/db.csv" | wc -l)

# nginx's log: "$upstream_status" lists every replica tried ("502, 200" = passed on to another).
passed_on=$(grep -cE '"[0-9]{3}(, [0-9]{3})+"' "$T/nginx/access.log")
to_victim=$(grep -c "127.0.0.1:$VICTIM_PORT" "$T/nginx/access.log")

echo "scaleout figures (3 replicas x --threads 1, nginx, PostgreSQL; $CLIENTS clients, ${DURATION} s, replica 2 killed at ${KILL_AT} s):"
jq -r '"  served \(.served) (\(.served_per_s * 10 | round / 10) req/s), shed \(.shed) (503 overloaded), other errors \(.errors)",
       "  latency of served requests: p50 \(.served_ms.p50 | round) ms, p99 \(.served_ms.p99 | round) ms, max \(.served_ms.max | round) ms",
       (.error_kinds | to_entries[] | "  error x\(.value): \(.key | gsub("\\s+"; " "))"),
       "  exam writes: \(.exams.acked) acknowledged, \(.exams.retries) retried by the client, \(.exams.failed) failed"' "$T/load.json"
echo "  exams acknowledged $acked, found exactly once $found, missing $missing, wrong $wrong; saved but never acknowledged $unacked"
echo "  nginx: $to_victim requests went to the killed replica; $passed_on passed on to another replica (replica statuses:" \
    "$(grep -oE '"[0-9]{3}(, [0-9]{3})+"' "$T/nginx/access.log" | sort | uniq -c | awk '{ $1 = $1 "x"; print }' | paste -sd ';' -))"
if ((FAILED)); then
    echo "scaleout: FAILED (logs: replicas, nginx and PostgreSQL below)"
    tail -n 5 "$T"/replica*.log "$T/nginx/error.log" "$T/sock/pg.log" 2>/dev/null
    exit 1
fi
echo "scaleout: passed"
