#!/usr/bin/env bash
# Checks the Kubernetes manifests (deploy/k8s) and the systemd units (deploy/systemd) against the
# fetalhc binary they will run, since neither can be started here:
#   - every --flag a container or ExecStart passes exists in `fetalhc <subcommand> --help`;
#   - serve: containerPort = --port, CPU request = --threads, --host not loopback (probes and the
#     Service reach the pod from outside), readiness and liveness probes on a containerPort, their
#     paths GET routes that answer without the token (asked of a running `fetalhc serve`), the
#     Secret mounted where --token-file points and holding that key, secretKeyRefs that exist;
#   - the Service selects the Deployment's pods on a container port; the HPA scales a Deployment
#     that has CPU requests; an indexed Job's `measure --shard I/N` has N = completions and I from
#     the completion index; kustomization.yaml lists files that exist.
#
#   bash deploy/check_manifests.sh FETALHC_BINARY [K8S_DIR] [SYSTEMD_DIR]
#
# Needs jq and yq (Debian packages), curl. Prints one line per problem; exit 0 when none, 1 when
# some, 2 on a usage or tool problem.
set -u
BIN=${1:?usage: bash deploy/check_manifests.sh FETALHC_BINARY [K8S_DIR] [SYSTEMD_DIR]}
HERE=$(cd "$(dirname "$0")" && pwd)
K8S=${2:-$HERE/k8s}
SYSTEMD=${3:-$HERE/systemd}
for tool in jq yq curl; do
    command -v "$tool" >/dev/null || { echo "check_manifests: '$tool' is missing (apt-get install $tool)" >&2; exit 2; }
done
[[ -x $BIN ]] || { echo "check_manifests: '$BIN' is not an executable fetalhc binary" >&2; exit 2; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
T=$(mktemp -d "${TMPDIR:-/tmp}/fetalhc_manifests.XXXXXX") || exit 2
SERVER_PID=""
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
PROBLEMS=0
problem() {
    echo "problem: $*"
    PROBLEMS=$((PROBLEMS + 1))
}

# The options a subcommand defines (option lines of its --help, not flags named in descriptions).
flags_of() {
    local sub=$1
    [[ -f $T/flags_$sub ]] || "$BIN" "$sub" --help 2>/dev/null | grep -oE '^ +(-[A-Za-z],)?--[a-z0-9-]+' |
        grep -oE -- '--[a-z0-9-]+' >"$T/flags_$sub"
    cat "$T/flags_$sub"
}
# The default of a serve option as --help prints it (`--port INT=8080`).
serve_default() { "$BIN" serve --help | grep -E "^ +--$1 " | sed -E 's/^ +--[a-z-]+ [A-Z]+=([^ ]*).*/\1/'; }

# check_argv WHERE SUBCOMMAND ARG...: every --flag exists; sets FLAG_<name> to each flag's value.
check_argv() {
    local where=$1 sub=$2
    shift 2
    if ! flags_of "$sub" | grep -q .; then
        problem "$where: '$sub' is not a fetalhc subcommand with options"
        return
    fi
    unset "${!FLAG_@}"
    while (($#)); do
        local a=$1 name value=""
        shift
        [[ $a == --* ]] || continue
        name=${a%%=*}
        if [[ $a == *=* ]]; then value=${a#*=}; elif (($#)) && [[ $1 != --* ]]; then value=$1; fi
        if ! flags_of "$sub" | grep -qxF -- "$name"; then
            problem "$where: 'fetalhc $sub' has no option $name (see fetalhc $sub --help)"
            continue
        fi
        local var=FLAG_${name#--}
        printf -v "${var//-/_}" '%s' "$value"
    done
}

# ---- documents --------------------------------------------------------------------------------------
: >"$T/docs"
for f in "$K8S"/*.yaml; do
    [[ -e $f ]] || { problem "$K8S holds no .yaml files"; break; }
    yq -c . "$f" 2>"$T/yq_err" | jq -c --arg file "$(basename "$f")" 'select(. != null) | . + {__file: $file}' >>"$T/docs" ||
        problem "$(basename "$f"): not valid YAML: $(head -c 300 "$T/yq_err")"
done
docs() { jq -c "$@" "$T/docs"; }
secret_has_key() {  # NAME KEY
    docs --arg n "$1" --arg k "$2" 'select(.kind == "Secret" and .metadata.name == $n)
        | select(((.stringData // {}) + (.data // {})) | has($k))' | grep -q .
}
millicores() {  # "2" -> 2000, "500m" -> 500, "1.5" -> 1500
    local v=$1
    if [[ $v =~ ^([0-9]+)m$ ]]; then echo "${BASH_REMATCH[1]}"
    elif [[ $v =~ ^[0-9]+(\.[0-9]+)?$ ]]; then awk -v v="$v" 'BEGIN { printf "%d", v * 1000 + 0.5 }'
    else echo "?"; fi
}

PROBE_PATHS=()
# The fetalhc command line of a container (from a `sh -c` script: the words after `fetalhc` up to
# the first shell operator), one word per line; nothing when the container does not run fetalhc.
fetalhc_argv() {
    local row=$1 full first script segment
    full=$(jq -c '(.c.command // []) + (.c.args // [])' <<<"$row")
    first=$(jq -r '.[0] // ""' <<<"$full")
    if [[ ${first##*/} == fetalhc ]]; then
        jq -r '.[1:][]' <<<"$full"
        return
    fi
    script=$(jq -r 'if (.[0] // "" | test("(^|/)(ba|da)?sh$")) and .[1] == "-c" then .[2] // "" else "" end' <<<"$full")
    segment=$(tr '\n' ' ' <<<"$script" | grep -oE '(^|[ /])fetalhc [^;&|>]*' | head -n 1)
    [[ -n $segment ]] || return 0
    segment=${segment#*fetalhc }
    tr -d "\"'" <<<"$segment" | tr -s ' \t' '\n\n' | grep -v '^$'
}

# Every secretKeyRef of a container names a Secret of the manifests holding that key.
check_secret_refs() {
    local where=$1 row=$2 name key
    while IFS=$'\t' read -r name key; do
        [[ -n $name ]] || continue
        secret_has_key "$name" "$key" || problem "$where: env refers to key '$key' of Secret '$name', which no manifest defines"
    done < <(jq -r '.c.env // [] | .[] | .valueFrom.secretKeyRef // empty | [.name, .key] | @tsv' <<<"$row")
}

# A probe: present when required, an HTTP GET on the serve port.
check_probe() {
    local where=$1 row=$2 probe=$3 required=$4 port=$5 path pport named
    if ! jq -e --arg p "$probe" '.c[$p]' <<<"$row" >/dev/null; then
        ((required)) && problem "$where: no $probe (GET /health)"
        return
    fi
    path=$(jq -r --arg p "$probe" '.c[$p].httpGet.path // ""' <<<"$row")
    pport=$(jq -r --arg p "$probe" '.c[$p].httpGet.port // ""' <<<"$row")
    if [[ -z $path ]]; then
        problem "$where: $probe is not an httpGet probe with a path"
        return
    fi
    PROBE_PATHS+=("$path")
    if [[ $pport =~ ^[0-9]+$ ]]; then
        [[ $pport == "$port" ]] || problem "$where: $probe port $pport is not --port $port"
    else
        named=$(jq -r --arg n "$pport" '.c.ports // [] | .[] | select(.name == $n) | .containerPort' <<<"$row")
        [[ $named == "$port" ]] || problem "$where: $probe port '$pport' is not a container port named for --port $port"
    fi
}

# --token-file points into a mounted Secret volume that holds the key.
check_token_mount() {
    local where=$1 row=$2 file=$3 dir base mount volume secret key
    if [[ -z $file ]]; then
        problem "$where: no --token-file: serve refuses a non-loopback --host without the token"
        return
    fi
    dir=$(dirname "$file")
    base=$(basename "$file")
    mount=$(jq -c --arg d "$dir" --arg f "$file" '.c.volumeMounts // [] | .[]
        | select((.mountPath == $d and (.subPath // "") == "") or (.mountPath == $f and (.subPath // "") != ""))' <<<"$row" | head -n 1)
    if [[ -z $mount ]]; then
        problem "$where: --token-file $file is in no mounted volume (mount the token Secret at $dir)"
        return
    fi
    volume=$(jq -c --argjson m "$mount" '.spec.template.spec.volumes // [] | .[] | select(.name == $m.name)' <<<"$row")
    secret=$(jq -r '.secret.secretName // ""' <<<"${volume:-null}")
    if [[ -z $secret ]]; then
        problem "$where: the volume mounted at $dir for --token-file is not a Secret"
        return
    fi
    [[ $(jq -r '.subPath // ""' <<<"$mount") != "" ]] && base=$(jq -r '.subPath' <<<"$mount")
    if jq -e '.secret.items' <<<"$volume" >/dev/null; then
        key=$(jq -r --arg b "$base" '.secret.items[] | select(.path == $b) | .key' <<<"$volume")
    else
        key=$base
    fi
    [[ -n $key ]] || problem "$where: Secret volume '$secret' puts no file at $file"
    [[ -z $key ]] || secret_has_key "$secret" "$key" ||
        problem "$where: --token-file $file needs key '$key' in Secret '$secret', which no manifest defines"
}

check_serve_container() {
    local where=$1 row=$2 port host threads cpu
    port=${FLAG_port:-$(serve_default port)}
    host=${FLAG_host:-$(serve_default host)}
    jq -e --argjson p "${port:-0}" '.c.ports // [] | map(.containerPort) | index($p)' <<<"$row" >/dev/null ||
        problem "$where: no containerPort $port (--port)"
    [[ $host =~ ^(127\.|localhost$|::1$|\[::1\]$) ]] &&
        problem "$where: --host $host is loopback: probes and the Service cannot reach it (use 0.0.0.0)"
    threads=${FLAG_threads:-0}
    cpu=$(jq -r '.c.resources.requests.cpu // ""' <<<"$row")
    if ! [[ $threads =~ ^[1-9][0-9]*$ ]]; then
        problem "$where: --threads must be a count of cores (0, the default, means every core of the node)"
    elif [[ $(millicores "$cpu") != "$((threads * 1000))" ]]; then
        problem "$where: the CPU request '$cpu' is not --threads $threads"
    fi
    check_probe "$where" "$row" readinessProbe 1 "$port"
    check_probe "$where" "$row" livenessProbe 1 "$port"
    check_probe "$where" "$row" startupProbe 0 "$port"
    check_token_mount "$where" "$row" "${FLAG_token_file:-}"
}

# measure --shard I/N in an indexed Job: N = completions, I the pod's completion index.
check_shard_container() {
    local where=$1 row=$2 shard i n var
    shard=${FLAG_shard:-}
    [[ -n $shard ]] || return 0
    i=${shard%%/*}
    n=${shard#*/}
    [[ $(jq -r '.kind' <<<"$row") == Job ]] || return 0
    [[ $(jq -r '.spec.completionMode // ""' <<<"$row") == Indexed ]] || problem "$where: --shard needs completionMode: Indexed"
    [[ $n == "$(jq -r '.spec.completions // ""' <<<"$row")" ]] ||
        problem "$where: --shard $shard: N ($n) is not spec.completions ($(jq -r '.spec.completions' <<<"$row"))"
    var=$(sed -E 's/^\$\(?([A-Za-z_][A-Za-z0-9_]*)\)?$/\1/' <<<"$i")
    [[ $var == JOB_COMPLETION_INDEX ]] && return 0
    jq -e --arg v "$var" '.c.env // [] | .[] | select(.name == $v)
        | .valueFrom.fieldRef.fieldPath | test("job-completion-index")' <<<"$row" >/dev/null ||
        problem "$where: --shard $shard: I must be the completion index (\$JOB_COMPLETION_INDEX or an env from the annotation)"
}

check_container() {
    local row=$1 where sub
    where="$(jq -r '"\(.file): \(.kind) \(.name), container \(.c.name)"' <<<"$row")"
    check_secret_refs "$where" "$row"
    mapfile -t ARGV < <(fetalhc_argv "$row")
    if ((${#ARGV[@]} == 0)); then
        problem "$where: runs no fetalhc command"
        return
    fi
    sub=${ARGV[0]}
    check_argv "$where" "$sub" "${ARGV[@]:1}"
    case $sub in
        serve) check_serve_container "$where" "$row" ;;
        measure) check_shard_container "$where" "$row" ;;
    esac
}

# Each selecting Service picks a Deployment's pods, on a port a container declares.
check_services() {
    local svc where sel target
    while IFS= read -r svc; do
        where="$(jq -r '"\(.__file): Service \(.metadata.name)"' <<<"$svc")"
        sel=$(jq -c '.spec.selector' <<<"$svc")
        docs --argjson s "$sel" 'select(.kind == "Deployment") | select(.spec.template.metadata.labels as $l
            | $s | to_entries | all(.value == $l[.key]))' >"$T/selected"
        if [[ ! -s $T/selected ]]; then
            problem "$where: its selector $sel matches no Deployment's pods"
            continue
        fi
        while IFS= read -r target; do
            jq -e --arg t "$target" '[.spec.template.spec.containers[].ports // [] | .[]
                | select(.name == $t or (.containerPort | tostring) == $t)] | length > 0' "$T/selected" >/dev/null ||
                problem "$where: targetPort '$target' is no container port of the selected pods"
        done < <(jq -r '.spec.ports[] | (.targetPort // .port) | tostring' <<<"$svc")
    done < <(docs 'select(.kind == "Service" and .spec.selector)')
}

check_hpas() {
    local hpa where name
    while IFS= read -r hpa; do
        where="$(jq -r '"\(.__file): HorizontalPodAutoscaler \(.metadata.name)"' <<<"$hpa")"
        name=$(jq -r '.spec.scaleTargetRef.name' <<<"$hpa")
        docs --arg n "$name" 'select(.kind == "Deployment" and .metadata.name == $n)
            | select(all(.spec.template.spec.containers[]; .resources.requests.cpu))' | grep -q . ||
            problem "$where: scales '$name', which is no Deployment with CPU requests on every container"
        jq -e '.spec.metrics // [] | map(.resource.name) | index("cpu")' <<<"$hpa" >/dev/null ||
            problem "$where: no CPU metric"
    done < <(docs 'select(.kind == "HorizontalPodAutoscaler")')
}

check_kustomization() {
    local f
    [[ -f $K8S/kustomization.yaml ]] || return 0
    while IFS= read -r f; do
        [[ -f $K8S/$f ]] || problem "kustomization.yaml: resource '$f' does not exist"
    done < <(jq -r 'select(.kind == "Kustomization") | .resources // [] | .[]' "$T/docs")
}

# ExecStart of each unit: the flags exist; `systemd-analyze verify` (when present) finds nothing.
check_systemd_units() {
    local unit words copy name out
    for unit in "$SYSTEMD"/*.service; do
        [[ -e $unit ]] || continue
        name=$(basename "$unit")
        read -r -a words <<<"$(grep -E '^ExecStart=' "$unit" | head -n 1 | sed -E 's/^ExecStart=[-@:+!]*//')"
        if [[ ${words[0]:-} != */fetalhc ]]; then
            problem "$name: ExecStart does not run fetalhc"
            continue
        fi
        check_argv "$name" "${words[1]:-}" "${words[@]:2}"
        command -v systemd-analyze >/dev/null || continue
        copy=$T/units/${name/@.service/@8081.service}
        mkdir -p "$T/units"
        sed "s#^ExecStart=[^ ]*#ExecStart=$BIN#" "$unit" >"$T/units/$name"
        out=$(cd "$T/units" && systemd-analyze verify "./$(basename "$copy")" 2>&1 | grep -F "$name")
        [[ -z $out ]] || problem "$name: systemd-analyze verify: $out"
    done
    command -v systemd-analyze >/dev/null || echo "note: systemd-analyze not found: unit files not verified (apt-get install systemd)"
}

# The probe paths are GET routes of a real `fetalhc serve` (with a token, as in the cluster) that
# answer 200 without the token once the model is loaded.
check_probe_routes() {
    local url="" path code i
    ((${#PROBE_PATHS[@]})) || return 0
    url=${FETALHC_SERVER_URL:-}  # a server already started with a token file (tests/deploy_test.sh)
    [[ -n $url ]] || start_token_server url || return
    for path in $(printf '%s\n' "${PROBE_PATHS[@]}" | sort -u); do
        for ((i = 0; i < 120; i++)); do
            code=$(curl -s -o /dev/null -w '%{http_code}' "$url$path")
            [[ $code == 503 ]] || break  # 503: still loading the model
            sleep 0.5
        done
        [[ $code == 200 ]] || problem "probe path $path: GET without the token answers $code, not 200"
    done
}

# Starts `fetalhc serve` with a token file on a free loopback port; sets the variable named $1 to its URL.
start_token_server() {
    local -n server_url=$1
    local i
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$T/token"
    "$BIN" serve --port 0 --threads 1 --db "$T/probe.db" --token-file "$T/token" >"$T/serve.out" 2>"$T/serve.err" &
    SERVER_PID=$!
    local found=""
    for ((i = 0; i < 100; i++)); do
        found=$(grep -oE 'http://[0-9.]+:[0-9]+' "$T/serve.out" | head -n 1)
        [[ -n $found ]] && break
        sleep 0.1
    done
    if [[ -z $found ]]; then
        problem "fetalhc serve did not start: $(head -c 300 "$T/serve.err")"
        return 1
    fi
    server_url=$found
}

# ---- workloads --------------------------------------------------------------------------------------
docs 'select(.spec.template.spec.containers) | {file: .__file, kind, name: .metadata.name, spec: .spec,
      c: .spec.template.spec.containers[]}' >"$T/containers"
[[ -s $T/containers ]] || problem "no Deployment or Job with containers in $K8S"
while IFS= read -r row; do
    check_container "$row"
done <"$T/containers"
check_services
check_hpas
check_kustomization
check_systemd_units
check_probe_routes
if ((PROBLEMS)); then
    echo "check_manifests: $PROBLEMS problem(s)"
    exit 1
fi
echo "check_manifests: the manifests and units agree with $BIN"
