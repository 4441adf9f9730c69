# Sourced by tests/deploy_test.sh and scripts/scaleout_test.sh: an nginx that runs the deploy
# configuration (deploy/nginx) from a temporary folder, as root or not, on loopback ports.
#
#   nginx_conf DIR DEPLOY_NGINX_DIR LISTEN_PORT REPLICA_LINES [EXTRA_HTTP]
#     writes DIR/nginx.conf: deploy's fetalhc-upstream.conf with its `server 127.0.0.1:808N ...;`
#     lines replaced by REPLICA_LINES (the ports of this run), deploy's fetalhc-proxy.conf unchanged,
#     inside a plain-HTTP server on 127.0.0.1:LISTEN_PORT; EXTRA_HTTP is added to the http block.
#   nginx_start DIR / nginx_stop DIR
#   deploy_replica_lines DEPLOY_NGINX_DIR PORT...: the deploy's `server 127.0.0.1:808N ...;` lines
#     (their max_fails and fail_timeout kept) with the N-th port replaced by the N-th PORT.
#   free_port: a TCP port nothing listens on now (loopback).

nginx_conf() {
    local dir=$1 src=$2 port=$3 replicas=$4 extra=${5:-}
    mkdir -p "$dir"
    chmod 755 "$dir"  # nginx's workers (nobody, when started as root) create their temp folders here
    FETALHC_REPLICA_LINES=$replicas awk '
        /^[ \t]*server 127\.0\.0\.1:808[0-9]/ { if (!done) { print ENVIRON["FETALHC_REPLICA_LINES"]; done = 1 } next }
        { print }' "$src/fetalhc-upstream.conf" >"$dir/fetalhc-upstream.conf"
    cp "$src/fetalhc-proxy.conf" "$dir/fetalhc-proxy.conf"
    {
        [[ $(id -u) == 0 ]] && echo "user nobody nogroup;"
        cat <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    include $dir/fetalhc-upstream.conf;
    server {
        listen 127.0.0.1:$port;
        server_name 127.0.0.1 localhost;
        access_log $dir/access.log fetalhc_private;
        include $dir/fetalhc-proxy.conf;
    }
$extra
}
EOF
    } >"$dir/nginx.conf"
}

deploy_replica_lines() {
    local src=$1 n=1 line port
    shift
    grep -E '^[[:space:]]*server 127\.0\.0\.1:808[0-9]' "$src/fetalhc-upstream.conf" | while IFS= read -r line; do
        port=${!n:-}
        [[ -n $port ]] && sed -E "s/127\.0\.0\.1:808[0-9]/127.0.0.1:$port/" <<<"$line"
        n=$((n + 1))
    done
}

nginx_check() { nginx -t -q -p "$1" -e "$1/error.log" -c "$1/nginx.conf"; }
nginx_start() { nginx -p "$1" -e "$1/error.log" -c "$1/nginx.conf"; }
nginx_stop() {
    [[ -f $1/nginx.pid ]] || return 0
    local pid
    pid=$(cat "$1/nginx.pid")
    kill -QUIT "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -TERM "$pid" 2>/dev/null
}

free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 30000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
    done
    return 1
}
