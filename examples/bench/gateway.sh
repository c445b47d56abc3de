#!/usr/bin/env bash
# examples/bench/gateway.sh — HTTP/1.1 keep-alive through the RedFire gateway vs nginx as a plain
# HTTP/1.1 reverse proxy, same run, same upstream (the echo backend of the rig in shared/peers).
#
# Run from the repository root:
#
#   bash examples/bench/gateway.sh                         # 3 rounds x 10 s per target
#   BENCH_SECS=5 BENCH_ROUNDS=2 bash examples/bench/gateway.sh
#
# The rig's own nginx target speaks h2c only (gRPC), so there is no HTTP/1.1 nginx path in the
# rig: this script renders its own one-worker nginx (HTTP/1.1 in, HTTP/1.1 keep-alive upstream
# pool to the backend), pinned like the rig's peers. Targets, every server pinned to
# PEERS_SERVER_CPUS with one worker, the load (wrk, -t1) on CPU 0:
#   direct   the backend itself (HTTP/1.1)
#   nginx    nginx 1.22 one hop: HTTP/1.1 -> HTTP/1.1 keep-alive -> backend
#   nginx_pair the gateway's topology with nginx: nginx -> HTTP/1.1 over mTLS (TLS 1.3, the rig's
#            PKI, keep-alive) -> nginx -> HTTP/1.1 keep-alive -> backend
#   gateway  redfire-sidecar --mode gateway with JWT (RS256) + RBAC on -> HTTP/2 over mTLS ->
#            redfire-sidecar (echo) -> HTTP/1.1 -> backend: two proxies, the path every request
#            through the gateway takes (the gateway's CPU and the service sidecar's are both
#            charged, both on the server CPU)
#   gw_nojwt the same with a policy of routes only (what JWT + RBAC cost)
# Per target: requests/s (median of rounds, order shuffled per round), p50/p99 latency from wrk
# --latency (closed loop, BENCH_CONNS connections), the proxies' CPU time per request (utime +
# stime from /proc), non-2xx responses, and a check that the
# backend's request counter grew by what wrk reports (else the row says INVALID).
# Every target gets the same request, with the same `Authorization: Bearer` RS256 token (verified
# tokens are cached by the gateway, as a keep-alive client reusing its token would see).
#
# Uses the running rig when its backend answers, else runs the rig's setup.sh/start.sh and, at
# the end, its stop.sh. Stops exactly the processes it started, by PID.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS_DIR=$(cd "${PEERS_DIR:-$REPO/../shared/peers}" && pwd) || { echo "rig not found (set PEERS_DIR)" >&2; exit 1; }
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
WORK=$(mktemp -d /tmp/redfire-gwbench.XXXXXX)
SECS=${BENCH_SECS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONNS=${BENCH_CONNS:-16}

log() { printf '[gwbench] %s\n' "$*" >&2; }
die() { printf '[gwbench] error: %s\n' "$*" >&2; exit 1; }
starttime() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*[ZX]' "/proc/$1/status" 2>/dev/null; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
code() { curl -s --noproxy '*' --max-time 1 -o /dev/null -w '%{http_code}' "$1" 2>/dev/null || true; }
is200() { [ "$(code "$1")" = 200 ]; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

OURS=()
RIG_STARTED=false
cleanup() {
  local rc=$? entry pid st
  trap - EXIT INT TERM
  for entry in "${OURS[@]}"; do
    IFS=: read -r pid st <<<"$entry"
    if alive "$pid" && [ "$(starttime "$pid")" = "$st" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for entry in "${OURS[@]}"; do
    IFS=: read -r pid st <<<"$entry"
    for _ in $(seq 1 150); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid" && [ "$(starttime "$pid")" = "$st" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
  done
  if $RIG_STARTED; then "$PEERS_DIR/stop.sh" || log "rig stop.sh failed"; fi
  log "logs: $WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

spawn() {   # spawn LOGFILE CMD...; sets PID
  local logf=$1
  shift
  "$@" </dev/null >"$logf" 2>&1 &
  PID=$!
  OURS+=("$PID:$(starttime "$PID")")
}
wait_for() {   # wait_for WHAT CMD...: up to 30 s
  local what=$1 i
  shift
  for i in $(seq 1 600); do "$@" && return 0; sleep 0.05; done
  die "no $what after 30 s; logs in $WORK"
}

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release --bins"
  (cd "$REPO" && cargo build --release --bins -q)
fi
command -v wrk >/dev/null && command -v nginx >/dev/null || "$PEERS_DIR/setup.sh"
command -v wrk >/dev/null && command -v nginx >/dev/null || die "wrk and nginx are needed (the rig's setup.sh installs them)"

RIG_ENV=${PEERS_HOME:-/tmp/redfire-peers}/run/rig.env
if [ -s "$RIG_ENV" ] && . "$RIG_ENV" && [ "$(code "http://127.0.0.1:$BACKEND_PORT/__count")" = 200 ]; then
  log "using the running rig (backend :$BACKEND_PORT)"
else
  log "rig: setup.sh, start.sh"
  "$PEERS_DIR/setup.sh"
  "$PEERS_DIR/start.sh"
  RIG_STARTED=true
  . "$RIG_ENV"
fi
CPU=${PEERS_SERVER_CPUS:-1}
count() { curl -s --noproxy '*' --max-time 2 "http://127.0.0.1:$BACKEND_PORT/__count"; }

# ---- control, the service sidecar, the gateway ----------------------------------------------
CG=$(free_port); CA=$(free_port); IN=$(free_port); INA=$(free_port); INO=$(free_port)
GW=$(free_port); GWA=$(free_port); NG=$(free_port); GP=$(free_port); GPA=$(free_port)
mkdir -p "$WORK/ca" "$WORK/policies"
# The gateways' policies: routes, and for `gateway` JWT (RS256, a key made for this run) + RBAC.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/jwt.key" 2>/dev/null
openssl pkey -in "$WORK/jwt.key" -pubout -out "$WORK/jwt.pub"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
NOW=$(date +%s)
JWT_SIGNING_INPUT="$(printf '{"alg":"RS256","typ":"JWT","kid":"bench"}' | b64url).$(printf \
  '{"iss":"https://auth.bench","aud":"api","sub":"bench-user","roles":["user"],"iat":%d,"exp":%d}' \
  "$NOW" $((NOW + 86400)) | b64url)"
TOKEN="$JWT_SIGNING_INPUT.$(printf '%s' "$JWT_SIGNING_INPUT" | openssl dgst -sha256 -sign "$WORK/jwt.key" -binary | b64url)"
ROUTE='[[route]]
name = "echo"
path_prefix = "/"
service = "echo"'
printf '%s\n' "$ROUTE" >"$WORK/policies/gateway-plain.toml"
cat >"$WORK/policies/gateway.toml" <<EOF
$ROUTE

[jwt]
[[jwt.issuers]]
issuer = "https://auth.bench"
audiences = ["api"]
algorithms = ["RS256"]
keys = [{ kid = "bench", pem = """$(cat "$WORK/jwt.pub")""" }]

[rbac]
roles = { user = ["read"] }
[[rbac.rules]]
path = "/*"
permission = "read"
EOF
spawn "$WORK/control.log" "$BIN/redfire-control" --grpc-addr "127.0.0.1:$CG" --admin-addr "127.0.0.1:$CA" \
  --ca-dir "$WORK/ca" --policy-dir "$WORK/policies" --log-level warn
wait_for "control /ready" is200 "http://127.0.0.1:$CA/ready"
tok() { "$BIN/redfire-control" --ca-dir "$WORK/ca" --log-level warn token create --service "$1"; }
T_ECHO=$(tok echo); T_GW=$(tok gateway); T_GP=$(tok gateway-plain)
spawn "$WORK/echo-sidecar.log" env REDFIRE_BOOTSTRAP_TOKEN="$T_ECHO" taskset -c "$CPU" "$BIN/redfire-sidecar" \
  --control-addr "http://127.0.0.1:$CG" --service echo --worker-threads 1 --log-level warn \
  --inbound-addr "127.0.0.1:$IN" --admin-addr "127.0.0.1:$INA" --outbound-addr "127.0.0.1:$INO" \
  --app-addr "127.0.0.1:$BACKEND_PORT" --app-protocol http1
ECHO_PID=$PID
spawn "$WORK/gateway.log" env REDFIRE_BOOTSTRAP_TOKEN="$T_GW" taskset -c "$CPU" "$BIN/redfire-sidecar" \
  --control-addr "http://127.0.0.1:$CG" --service gateway --mode gateway --worker-threads 1 --log-level warn \
  --gateway-addr "127.0.0.1:$GW" --admin-addr "127.0.0.1:$GWA"
GW_PID=$PID
spawn "$WORK/gateway-plain.log" env REDFIRE_BOOTSTRAP_TOKEN="$T_GP" taskset -c "$CPU" "$BIN/redfire-sidecar" \
  --control-addr "http://127.0.0.1:$CG" --service gateway-plain --mode gateway --worker-threads 1 \
  --log-level warn --gateway-addr "127.0.0.1:$GP" --admin-addr "127.0.0.1:$GPA"
GP_PID=$PID
authcode() { curl -s --noproxy '*' --max-time 1 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$1" 2>/dev/null || true; }
auth200() { [ "$(authcode "$1")" = 200 ]; }
wait_for "echo sidecar /ready" is200 "http://127.0.0.1:$INA/ready"
wait_for "gateway /ready" is200 "http://127.0.0.1:$GWA/ready"
wait_for "gateway-plain /ready" is200 "http://127.0.0.1:$GPA/ready"
wait_for "a 200 through the gateway with the token" auth200 "http://127.0.0.1:$GW/"
wait_for "a 200 through gateway-plain" auth200 "http://127.0.0.1:$GP/"
[ "$(code "http://127.0.0.1:$GW/")" = 401 ] || die "the gateway lets a request without a token through"

# ---- nginx, HTTP/1.1 plain reverse proxy ------------------------------------------------------
# nginx_conf DIR LISTEN UPSTREAM_PORT [SERVER_TLS] [UPSTREAM_TLS]: one worker, HTTP/1.1 in, HTTP/1.1
# keep-alive upstream pool. SERVER_TLS=1: the listener requires mTLS (TLS 1.3, client certificate
# from the rig's CA); UPSTREAM_TLS=1: the upstream is reached over mTLS (the outbound certificate,
# the inbound's name verified), connections and sessions reused.
nginx_conf() {
  local dir=$1 listen=$2 up=$3 server_tls=${4:-0} upstream_tls=${5:-0} scheme=http tls_in="" tls_out=""
  mkdir -p "$dir"
  if [ "$server_tls" = 1 ]; then
    listen="$listen ssl"
    tls_in="ssl_protocols TLSv1.3; ssl_certificate $PKI/inbound.crt; ssl_certificate_key $PKI/inbound.key;
    ssl_client_certificate $PKI/ca.crt; ssl_verify_client on;"
  fi
  if [ "$upstream_tls" = 1 ]; then
    scheme=https
    tls_out="proxy_ssl_protocols TLSv1.3; proxy_ssl_certificate $PKI/outbound.crt;
      proxy_ssl_certificate_key $PKI/outbound.key; proxy_ssl_trusted_certificate $PKI/ca.crt;
      proxy_ssl_verify on; proxy_ssl_name inbound.local; proxy_ssl_session_reuse on;"
  fi
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log stderr warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_requests 1000000;
  upstream backend {
    server 127.0.0.1:$up;
    keepalive 1024;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$listen;
    $tls_in
    location / {
      proxy_pass $scheme://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      $tls_out
    }
  }
}
EOF
}
nginx_conf "$WORK/nginx" "$NG" "$BACKEND_PORT"
spawn "$WORK/nginx.log" taskset -c "$CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
NGINX_PID=$PID
wait_for "a 200 through nginx" is200 "http://127.0.0.1:$NG/"
# The same topology as the gateway's: two proxies, mTLS between them.
NPI=$(free_port); NPO=$(free_port)
nginx_conf "$WORK/nginx-in" "$NPI" "$BACKEND_PORT" 1 0
nginx_conf "$WORK/nginx-out" "$NPO" "$NPI" 0 1
spawn "$WORK/nginx-in.log" taskset -c "$CPU" nginx -p "$WORK/nginx-in" -c "$WORK/nginx-in/nginx.conf"
NGINX_IN_PID=$PID
spawn "$WORK/nginx-out.log" taskset -c "$CPU" nginx -p "$WORK/nginx-out" -c "$WORK/nginx-out/nginx.conf"
NGINX_OUT_PID=$PID
wait_for "a 200 through the nginx pair" is200 "http://127.0.0.1:$NPO/"

# ---- load -------------------------------------------------------------------------------------
declare -A PORT=([direct]=$BACKEND_PORT [nginx]=$NG [nginx_pair]=$NPO [gateway]=$GW [gw_nojwt]=$GP)
TARGETS="direct nginx nginx_pair gateway gw_nojwt"
declare -A PIDS CPU SPLIT
PIDS=([nginx]=$NGINX_PID [nginx_pair]="$NGINX_IN_PID $NGINX_OUT_PID" [gateway]="$GW_PID $ECHO_PID" [gw_nojwt]="$GP_PID $ECHO_PID")
declare -A RPS P50 P99 BAD
# wrk prints latencies as 655.00us, 7.02ms or 1.20s: microseconds, so medians compare numbers.
to_us() { awk '{ v = $1 + 0; if ($1 ~ /us$/) print v; else if ($1 ~ /ms$/) print v * 1000; else print v * 1000000 }'; }
# CPU time (utime + stime, clock ticks) of a process and its children's threads: nginx's worker is
# a child of the master we started.
ticks() {
  local p sum=0
  for p in "$@" $(for q in "$@"; do cat "/proc/$q/task/$q/children" 2>/dev/null; done); do
    sum=$((sum + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0)))
  done
  echo "$sum"
}
HZ=$(getconf CLK_TCK)
run() {   # run TARGET ROUND
  local t=$1 out c0 c1 n t0 t1 p
  local -A each0 each1
  c0=$(count)
  t0=$(ticks ${PIDS[$t]:-})
  for p in ${PIDS[$t]:-}; do each0[$p]=$(ticks "$p"); done
  out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -H "Authorization: Bearer $TOKEN" \
    "http://127.0.0.1:${PORT[$t]}/" 2>&1)
  echo "$out" >"$WORK/wrk-$t-$2.txt"
  c1=$(count)
  t1=$(ticks ${PIDS[$t]:-})
  for p in ${PIDS[$t]:-}; do each1[$p]=$(ticks "$p"); done
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  # Per process, this round (the last round's split is printed).
  SPLIT[$t]=""
  for p in ${PIDS[$t]:-}; do
    SPLIT[$t]+="$(awk -v d=$((each1[$p] - each0[$p])) -v n="$n" -v hz="$HZ" 'BEGIN { printf "%.1f", n ? d * 1e6 / hz / n : 0 }') "
  done
  CPU[$t]+="$(awk -v d=$((t1 - t0)) -v n="$n" -v hz="$HZ" 'BEGIN { printf "%.1f", n ? d * 1e6 / hz / n : 0 }') "
  RPS[$t]+="$(awk '/^Requests\/sec/ {print $2}' <<<"$out") "
  P50[$t]+="$(awk '$1 == "50%" {print $2}' <<<"$out" | to_us) "
  P99[$t]+="$(awk '$1 == "99%" {print $2}' <<<"$out" | to_us) "
  # wrk counts requests completed; the backend counts requests received (>= completed, by at most
  # the connections in flight when wrk stopped).
  if grep -q 'Non-2xx' <<<"$out" || [ $((c1 - c0)) -lt "$n" ] || [ $((c1 - c0)) -gt $((n + CONNS)) ]; then
    BAD[$t]="INVALID"
  fi
}
for r in $(seq 1 "$ROUNDS"); do
  for t in $(printf '%s\n' $TARGETS | shuf); do
    log "round $r: $t"
    run "$t" "$r"
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "HTTP/1.1 keep-alive, wrk -t1 -c$CONNS, ${SECS}s x $ROUNDS rounds (medians); servers on CPU $CPU, one worker each"
# RSS of a process and its children (nginx's worker is a child of the master we started).
rss_tree() {
  local p sum=0
  for p in "$1" $(cat "/proc/$1/task/$1/children" 2>/dev/null); do sum=$((sum + $(rss_kb "$p"))); done
  echo "$sum"
}
printf '%-10s %10s %10s %10s %14s %12s %s\n' target rps p50_us p99_us proxy_cpu_us rss_MB check
for t in $TARGETS; do
  case $t in
    nginx) rss=$(rss_tree "$NGINX_PID") ;;
    nginx_pair) rss=$(( $(rss_tree "$NGINX_IN_PID") + $(rss_tree "$NGINX_OUT_PID") )) ;;
    gateway) rss=$(( $(rss_kb "$GW_PID") + $(rss_kb "$ECHO_PID") )) ;;
    gw_nojwt) rss=$(( $(rss_kb "$GP_PID") + $(rss_kb "$ECHO_PID") )) ;;
    *) rss=0 ;;
  esac
  cpu=$(median <<<"${CPU[$t]:-}")
  printf '%-10s %10s %10s %10s %14s %12s %s\n' "$t" "$(median <<<"${RPS[$t]}")" "$(median <<<"${P50[$t]}")" \
    "$(median <<<"${P99[$t]}")" "$( [ "$t" = direct ] && echo - || echo "${cpu:--}")" \
    "$(awk -v k="$rss" 'BEGIN { printf (k ? "%.1f" : "-"), k / 1024 }')" "${BAD[$t]:-ok}"
done
echo "(gateway = gateway + the echo service's sidecar, two proxies; nginx = one proxy; nginx_pair = two;"
echo " proxy_cpu_us = CPU time of those proxies per request, utime + stime; rss of the proxies)"
echo "CPU µs per request by process, last round:"
printf '  %-10s %s\n' nginx "nginx ${SPLIT[nginx]:-}" nginx_pair "in, out: ${SPLIT[nginx_pair]:-}" \
  gateway "gateway, echo sidecar: ${SPLIT[gateway]:-}" gw_nojwt "gateway, echo sidecar: ${SPLIT[gw_nojwt]:-}"
