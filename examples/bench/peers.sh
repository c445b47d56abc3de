#!/usr/bin/env bash
# examples/bench/peers.sh — measure the RedFire sidecar pair against the nginx and Envoy
# mTLS pairs (and the single-hop peers) of the loopback rig in shared/peers.
#
# Run from the repository root:
#
#   bash examples/bench/peers.sh                                          # full run (~2.5 min)
#   PEERS_N=10000 PEERS_ROUNDS=2 PEERS_LAT_SECS=2 bash examples/bench/peers.sh   # quick check
#
# What it does, in order:
#   1. cargo build --release --bins (redfire-control, redfire-sidecar; see BENCH_GIT_REF)
#   2. the rig's setup.sh (idempotent) and start.sh, then sources its run/rig.env
#   3. starts redfire-control (in-memory store, fresh CA dir, unpinned: it is idle during the
#      run and not measured) and creates one bootstrap token per service
#   4. starts the pair, each sidecar pinned with taskset to PEERS_SERVER_CPUS, one worker
#      thread, logging at warn:
#        IN  (service echo):         mTLS inbound -> h2c -> the rig's echo backend
#        OUT (service bench-client): upstream listener echo=127.0.0.1:PEERS_BASE+5 (18085)
#      h2load -> OUT (h2c gRPC) -> HTTP/2 over mTLS -> IN -> backend
#   5. waits (bounded) until both /ready are 200, OUT's /admin/endpoints lists IN's inbound
#      address for echo, and one gRPC probe through the pair reaches the backend
#   6. runs the rig's compare.sh with redfire_pair:PEERS_BASE+5:OUT_PID,IN_PID
#   7. prints the sidecars' RSS after the load, then stops everything it started
#
# What it measures (besides compare.sh's table: cpu_us/req, rps ratios, +p50 at a fixed rate,
# RSS, see shared/peers/README.md):
#   - startup_ms per sidecar: from just before the spawn until its admin /ready answers 200
#     (polled every ~5 ms with curl, so +-5..10 ms); and for OUT also until the first gRPC
#     request went through the pair (the rig's own start_ms for a pair's outbound half is
#     "fork -> first gRPC request through it", so this is the comparable figure)
#   - idle RSS (VmRSS from /proc/PID/status) of each sidecar after readiness, before load,
#     and RSS after compare.sh's load
#   - noise: CPU used by other processes on the machine while compare.sh ran (e.g. a build),
#     sampled by examples/bench/noise.py
#
# Settings (environment): PEERS_DIR (default: ../shared/peers relative to the repo root),
# PEERS_HOME, PEERS_BASE, PEERS_SERVER_CPUS and every compare.sh knob (PEERS_N, PEERS_ROUNDS,
# PEERS_LAT_SECS, PEERS_ONLY, ...) pass through. BENCH_READY_TIMEOUT_S (30) bounds each wait,
# BENCH_SKIP_BUILD=1 skips cargo. BENCH_GIT_REF=REF (e.g. HEAD) measures a clean `git archive`
# snapshot of REF built under BENCH_BUILD_HOME (/tmp/redfire-bench-src) instead of the working
# tree, so uncommitted edits made meanwhile do not change what is measured. Logs of control
# and both sidecars stay in a fresh /tmp/redfire-bench.XXXXXX directory (printed at the end).
#
# Everything listens on 127.0.0.1. On exit (also on error or Ctrl-C) it stops exactly the
# processes it started, by PID (checking the recorded start time), and runs the rig's stop.sh
# if its start.sh had succeeded. Nothing is written under the rig's directory.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS_DIR=${PEERS_DIR:-$REPO/../shared/peers}
PEERS_DIR=$(cd "$PEERS_DIR" && pwd) || { echo "error: rig not found at $PEERS_DIR (set PEERS_DIR)" >&2; exit 1; }
READY_TIMEOUT_S=${BENCH_READY_TIMEOUT_S:-30}
STOP_WAIT_S=15   # the sidecar drains for up to its shutdown grace (10 s) on SIGTERM
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
WORK=$(mktemp -d /tmp/redfire-bench.XXXXXX)

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }
now_ms() { local t=$EPOCHREALTIME; echo $(( ${t/./} / 1000 )); }   # no fork
starttime() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
alive() {
  local s
  s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo "?"; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo "?"; }
mb() { awk -v k="$1" 'BEGIN { if (k ~ /^[0-9]+$/) printf "%.1f", k / 1024; else print "?" }'; }
http_code() {   # http_code URL -> the status, 000 when nothing answers
  curl -s --noproxy '*' --max-time 1 -o /dev/null -w '%{http_code}' "$1" 2>/dev/null || true
}

# ---- cleanup: exactly what this script started --------------------------------------------
OURS=()            # "pid:starttime:name"
RIG_STARTED=false
cleanup() {
  local rc=$? entry pid st name left i
  trap - EXIT INT TERM
  if [ "${#OURS[@]}" -gt 0 ]; then
    log "stopping ${#OURS[@]} process(es) started here"
    for entry in "${OURS[@]}"; do
      IFS=: read -r pid st name <<<"$entry"
      if alive "$pid" && [ "$(starttime "$pid")" = "$st" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for ((i = 0; i < STOP_WAIT_S * 10; i++)); do
      left=0
      for entry in "${OURS[@]}"; do
        IFS=: read -r pid st name <<<"$entry"
        if alive "$pid" && [ "$(starttime "$pid")" = "$st" ]; then left=$((left + 1)); fi
      done
      [ "$left" -gt 0 ] || break
      sleep 0.1
    done
    for entry in "${OURS[@]}"; do
      IFS=: read -r pid st name <<<"$entry"
      if alive "$pid" && [ "$(starttime "$pid")" = "$st" ]; then
        log "  $name (pid $pid) ignored SIGTERM for ${STOP_WAIT_S}s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      wait "$pid" 2>/dev/null || true   # reap (they are our children)
    done
  fi
  if $RIG_STARTED; then
    "$PEERS_DIR/stop.sh" || log "rig stop.sh failed"
  fi
  log "logs: $WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# spawn NAME LOGFILE CMD...: start CMD in the background (stdin /dev/null, output to LOGFILE);
# sets PID and T0 (ms, taken just before the fork). A simple background command is exec'd
# by bash's forked child and taskset execs in place, so PID is the server's own PID.
spawn() {
  local name=$1 logf=$2
  shift 2
  T0=$(now_ms)
  "$@" </dev/null >"$logf" 2>&1 &
  PID=$!
  OURS+=("$PID:$(starttime "$PID"):$name")
}

# wait_until NAME PID LOGFILE WHAT CMD...: poll CMD (every ~5 ms) until it succeeds, at most
# READY_TIMEOUT_S; fail fast if PID died (its log tail is shown).
wait_until() {
  local name=$1 pid=$2 logf=$3 what=$4 deadline
  shift 4
  deadline=$(( $(now_ms) + READY_TIMEOUT_S * 1000 ))
  until "$@"; do
    if ! alive "$pid"; then
      tail -n 30 "$logf" >&2 || true
      die "$name (pid $pid) exited while waiting for $what; log: $logf"
    fi
    if [ "$(now_ms)" -ge "$deadline" ]; then
      tail -n 30 "$logf" >&2 || true
      die "$name (pid $pid): no $what after ${READY_TIMEOUT_S}s; log: $logf"
    fi
    sleep 0.005
  done
}

ready() { [ "$(http_code "http://127.0.0.1:$1/ready")" = 200 ]; }

# has_endpoint ADMIN_PORT ADDR: the sidecar's /admin/endpoints lists ADDR (a cheap grep, so the
# poll does not add python's start-up to the measured time; endpoint_of checks the service).
has_endpoint() {
  curl -s --noproxy '*' --max-time 1 "http://127.0.0.1:$1/admin/endpoints" 2>/dev/null |
    grep -F "\"address\": \"$2\"" >/dev/null
}
# endpoint_of ADMIN_PORT SERVICE ADDR: ADDR is an endpoint of SERVICE.
endpoint_of() {
  curl -s --noproxy '*' --max-time 1 "http://127.0.0.1:$1/admin/endpoints" 2>/dev/null |
    python3 -c '
import json, sys
try:
    eps = json.load(sys.stdin).get(sys.argv[1], {}).get("endpoints", [])
except ValueError:
    sys.exit(1)
sys.exit(0 if any(e.get("address") == sys.argv[2] for e in eps) else 1)' "$2" "$3"
}

backend_count() { curl -s --noproxy '*' --max-time 2 "http://127.0.0.1:$BACKEND_PORT/__count"; }

# probe PORT: one gRPC request (the rig's body) through PORT; passes only when h2load saw it
# succeed with 2xx and the backend counted it (gRPC errors come back as HTTP 200).
probe() {
  local c0 c1 out
  c0=$(backend_count) || return 1
  out=$(timeout 5 h2load -n1 -c1 -d "$GRPC_BODY" -H 'content-type: application/grpc' \
    -H 'te: trailers' "http://127.0.0.1:$1$GRPC_PATH" 2>&1) || true
  c1=$(backend_count) || return 1
  grep -q ' 1 succeeded' <<<"$out" && grep -q 'status codes: 1 2xx' <<<"$out" &&
    [ "$((c1 - c0))" -eq 1 ]
}

# Show what one request through PORT returns, trailers included (for a failed probe).
show_request() {
  log "one request through :$1 with curl (headers and trailers):"
  curl -s --noproxy '*' --max-time 5 --http2-prior-knowledge -D - -o /dev/null \
    -H 'content-type: application/grpc' -H 'te: trailers' --data-binary "@$GRPC_BODY" \
    "http://127.0.0.1:$1$GRPC_PATH" >&2 || true
}

rig_pids() { awk '{ print $1 }' "$PEERS_HOME/run/pids.txt" 2>/dev/null; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

log "repo $REPO, rig $PEERS_DIR, work dir $WORK"

# ---- 1. build -------------------------------------------------------------------------------
# Default: the working tree, as `cargo build --release --bins` in the repo. BENCH_GIT_REF=REF
# builds a clean `git archive` snapshot of REF instead (under BENCH_BUILD_HOME, own target dir),
# so edits being made in the working tree meanwhile do not change what is measured.
if [ -n "${BENCH_GIT_REF:-}" ]; then
  BUILD_HOME=${BENCH_BUILD_HOME:-/tmp/redfire-bench-src}
  SHA=$(git -C "$REPO" rev-parse --verify "$BENCH_GIT_REF^{commit}") || die "unknown git ref $BENCH_GIT_REF"
  SRC=$BUILD_HOME/$SHA
  if [ ! -s "$SRC/Cargo.toml" ]; then
    log "snapshot of $BENCH_GIT_REF ($SHA) into $SRC"
    rm -rf "$SRC.tmp"
    mkdir -p "$SRC.tmp"
    git -C "$REPO" archive "$SHA" | tar -x -C "$SRC.tmp"
    mv "$SRC.tmp" "$SRC"
  fi
  BIN=$BUILD_HOME/target/release
  SOURCE="git snapshot of $BENCH_GIT_REF = $(git -C "$REPO" log -1 --format='%h %s' "$SHA" | cut -c1-80)"
  if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release --bins in $SRC (target $BUILD_HOME/target)"
    (cd "$SRC" && CARGO_TARGET_DIR=$BUILD_HOME/target cargo build --release --bins --example loadgen --locked -q)
  fi
else
  dirty=$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | wc -l)
  SOURCE="working tree at $(git -C "$REPO" log -1 --format='%h %s' 2>/dev/null | cut -c1-60)"
  [ "$dirty" -eq 0 ] || SOURCE="$SOURCE + $dirty modified file(s)"
  if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release --bins ($SOURCE)"
    (cd "$REPO" && cargo build --release --bins --example loadgen -q)
  fi
fi
[ -x "$BIN/redfire-control" ] && [ -x "$BIN/redfire-sidecar" ] && [ -x "$BIN/examples/loadgen" ] ||
  die "release binaries missing in $BIN"
log "measuring: $SOURCE"

# ---- 2. the rig -----------------------------------------------------------------------------
log "rig: setup.sh"
"$PEERS_DIR/setup.sh"
log "rig: start.sh"
"$PEERS_DIR/start.sh"
RIG_STARTED=true   # only now is stop.sh ours to run
RIG_ENV=${PEERS_HOME:-/tmp/redfire-peers}/run/rig.env
[ -s "$RIG_ENV" ] || die "no $RIG_ENV after start.sh"
# shellcheck source=/dev/null
. "$RIG_ENV"
export PEERS_HOME PEERS_BASE PEERS_SERVER_CPUS   # compare.sh and stop.sh see the same rig
PEERS_LOAD_CPUS=${PEERS_LOAD_CPUS:-0}            # h2load's CPUs (compare.sh's default)

# Ports: the rig leaves PEERS_BASE+5..+9 and +14..+19 free for sidecars.
OUT_UPSTREAM_PORT=$((PEERS_BASE + 5))   # h2load talks to this (echo=...)
CONTROL_GRPC_PORT=$((PEERS_BASE + 6))
CONTROL_ADMIN_PORT=$((PEERS_BASE + 7))
IN_INBOUND_PORT=$((PEERS_BASE + 8))
IN_ADMIN_PORT=$((PEERS_BASE + 9))
IN_OUTBOUND_PORT=$((PEERS_BASE + 14))    # unused, but must not collide
OUT_INBOUND_PORT=$((PEERS_BASE + 15))    # unused
OUT_OUTBOUND_PORT=$((PEERS_BASE + 16))   # unused (shared outbound listener)
OUT_ADMIN_PORT=$((PEERS_BASE + 17))
for p in $OUT_UPSTREAM_PORT $CONTROL_GRPC_PORT $CONTROL_ADMIN_PORT $IN_INBOUND_PORT $IN_ADMIN_PORT \
  $IN_OUTBOUND_PORT $OUT_INBOUND_PORT $OUT_OUTBOUND_PORT $OUT_ADMIN_PORT; do
  port_free "$p" || die "127.0.0.1:$p is in use"
done

# ---- 3. control -----------------------------------------------------------------------------
CA_DIR=$WORK/ca
mkdir -p "$CA_DIR"
log "starting redfire-control on 127.0.0.1:$CONTROL_GRPC_PORT (admin :$CONTROL_ADMIN_PORT)"
spawn control "$WORK/control.log" "$BIN/redfire-control" --grpc-addr "127.0.0.1:$CONTROL_GRPC_PORT" \
  --admin-addr "127.0.0.1:$CONTROL_ADMIN_PORT" --ca-dir "$CA_DIR" --log-level warn
CONTROL_PID=$PID
wait_until control "$CONTROL_PID" "$WORK/control.log" "/ready on :$CONTROL_ADMIN_PORT" ready "$CONTROL_ADMIN_PORT"
log "  control ready in $(( $(now_ms) - T0 )) ms (pid $CONTROL_PID)"
TOKEN_IN=$("$BIN/redfire-control" --ca-dir "$CA_DIR" --log-level warn token create --service echo 2>>"$WORK/token.log")
TOKEN_OUT=$("$BIN/redfire-control" --ca-dir "$CA_DIR" --log-level warn token create --service bench-client 2>>"$WORK/token.log")
[ -n "$TOKEN_IN" ] && [ -n "$TOKEN_OUT" ] || die "token create printed nothing; see $WORK/token.log"

# ---- 4./5. the pair ---------------------------------------------------------------------------
CONTROL_URL=http://127.0.0.1:$CONTROL_GRPC_PORT
# sidecar NAME SERVICE TOKEN ARGS...: one pinned sidecar; the token goes in the environment
# (REDFIRE_BOOTSTRAP_TOKEN = --bootstrap-token) so it does not show in ps.
sidecar() {
  local name=$1 service=$2 token=$3
  shift 3
  spawn "$name" "$WORK/$name.log" env REDFIRE_BOOTSTRAP_TOKEN="$token" \
    taskset -c "$PEERS_SERVER_CPUS" "$BIN/redfire-sidecar" --control-addr "$CONTROL_URL" \
    --service "$service" --worker-threads 1 --log-level warn "$@"
}

log "starting sidecar IN (echo): inbound :$IN_INBOUND_PORT -> backend :$BACKEND_PORT, CPU $PEERS_SERVER_CPUS"
sidecar in echo "$TOKEN_IN" --inbound-addr "127.0.0.1:$IN_INBOUND_PORT" \
  --outbound-addr "127.0.0.1:$IN_OUTBOUND_PORT" --admin-addr "127.0.0.1:$IN_ADMIN_PORT" \
  --app-addr "127.0.0.1:$BACKEND_PORT" --app-protocol h2c
IN_PID=$PID
wait_until in "$IN_PID" "$WORK/in.log" "/ready on :$IN_ADMIN_PORT" ready "$IN_ADMIN_PORT"
IN_READY_MS=$(( $(now_ms) - T0 ))
log "  IN ready in $IN_READY_MS ms (pid $IN_PID)"

log "starting sidecar OUT (bench-client): upstream echo=127.0.0.1:$OUT_UPSTREAM_PORT, CPU $PEERS_SERVER_CPUS"
sidecar out bench-client "$TOKEN_OUT" --inbound-addr "127.0.0.1:$OUT_INBOUND_PORT" \
  --outbound-addr "127.0.0.1:$OUT_OUTBOUND_PORT" --admin-addr "127.0.0.1:$OUT_ADMIN_PORT" \
  --upstreams "echo=127.0.0.1:$OUT_UPSTREAM_PORT"
OUT_PID=$PID
OUT_T0=$T0
wait_until out "$OUT_PID" "$WORK/out.log" "/ready on :$OUT_ADMIN_PORT" ready "$OUT_ADMIN_PORT"
OUT_READY_MS=$(( $(now_ms) - OUT_T0 ))
log "  OUT ready in $OUT_READY_MS ms (pid $OUT_PID)"
wait_until out "$OUT_PID" "$WORK/out.log" "endpoint 127.0.0.1:$IN_INBOUND_PORT for echo" \
  has_endpoint "$OUT_ADMIN_PORT" "127.0.0.1:$IN_INBOUND_PORT"
OUT_ENDPOINT_MS=$(( $(now_ms) - OUT_T0 ))
log "  OUT sees IN (127.0.0.1:$IN_INBOUND_PORT) for echo $OUT_ENDPOINT_MS ms after its spawn"
if ! probe "$OUT_UPSTREAM_PORT"; then
  show_request "$OUT_UPSTREAM_PORT"
  die "the probe through the pair (:$OUT_UPSTREAM_PORT) did not reach the backend; logs in $WORK"
fi
OUT_FIRST_MS=$(( $(now_ms) - OUT_T0 ))
log "  probe through the pair reached the backend; $OUT_FIRST_MS ms after OUT's spawn"
endpoint_of "$OUT_ADMIN_PORT" echo "127.0.0.1:$IN_INBOUND_PORT" ||
  die "OUT lists 127.0.0.1:$IN_INBOUND_PORT, but not as an endpoint of echo"
ready "$IN_ADMIN_PORT" && ready "$OUT_ADMIN_PORT" || die "a sidecar stopped being ready"

IN_RSS_IDLE=$(rss_kb "$IN_PID")
OUT_RSS_IDLE=$(rss_kb "$OUT_PID")
IN_THREADS=$(threads "$IN_PID")
OUT_THREADS=$(threads "$OUT_PID")
# The rig's startup of a pair is max(out: fork -> first gRPC through it, in: accepts TCP);
# ours is max(IN: spawn -> /ready, OUT: spawn -> first gRPC through the pair).
rig_start() {
  awk -v a="$1_out" -v b="$1_in" '$1 == a || $1 == b { if ($2 > m) m = $2 } END { print m + 0 }' \
    "$PEERS_HOME/run/startup.txt"
}
PAIR_START_MS=$(( IN_READY_MS > OUT_FIRST_MS ? IN_READY_MS : OUT_FIRST_MS ))
sum_kb() { echo $(( ${1//[!0-9]/} + ${2//[!0-9]/} + 0 )); }

cat <<EOF

redfire pair: $SOURCE
release, --worker-threads 1, pinned to CPU $PEERS_SERVER_CPUS, log warn; control (pid $CONTROL_PID) unpinned, not measured
  sidecar  pid      spawn->/ready_ms  idle_rss_MB  threads
  IN       $(printf '%-7s  %16s  %11s  %7s' "$IN_PID" "$IN_READY_MS" "$(mb "$IN_RSS_IDLE")" "$IN_THREADS")
  OUT      $(printf '%-7s  %16s  %11s  %7s' "$OUT_PID" "$OUT_READY_MS" "$(mb "$OUT_RSS_IDLE")" "$OUT_THREADS")
  pair idle RSS: $(mb "$(sum_kb "$IN_RSS_IDLE" "$OUT_RSS_IDLE")") MB
  OUT spawn -> IN listed in OUT's /admin/endpoints: $OUT_ENDPOINT_MS ms; -> first gRPC through the pair: $OUT_FIRST_MS ms
  pair startup as the rig counts it (ms): redfire_pair $PAIR_START_MS, envoy_pair $(rig_start envoy), nginx_pair $(rig_start nginx)
  (compare's start_ms column shows '-' for redfire_pair: it only reads the rig's own startup.txt)

EOF

# ---- 6. loadgen, then compare -------------------------------------------------------------------
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# Noise: CPU that processes other than the rig, our three and compare.sh's own used meanwhile
# (sampled every 0.5 s by noise.py, pinned to the load CPUs to stay off the servers' CPU).
mapfile -t RIG_PIDS < <(rig_pids)
spawn noise "$WORK/noise.log" taskset -c "$PEERS_LOAD_CPUS" python3 "$HERE/noise.py" "$$" 0.5 \
  "$WORK/noise.txt" "${RIG_PIDS[@]}" "$IN_PID" "$OUT_PID" "$CONTROL_PID"
NOISE_PID=$PID
# Our own HTTP/2 load generator (examples/loadgen.rs): closed-loop rps and CPU per request, and
# open-loop latency corrected for coordinated omission, for every rig target and our pair.
# LOADGEN_ARGS pass through (e.g. "--requests 20000 --rounds 2 --secs 3").
if [ "${BENCH_LOADGEN:-1}" = 1 ]; then
  log "loadgen redfire_pair:$OUT_UPSTREAM_PORT:$OUT_PID,$IN_PID ${LOADGEN_ARGS:-}"
  # shellcheck disable=SC2086
  taskset -c "$PEERS_LOAD_CPUS" "$BIN/examples/loadgen" --rig "$PEERS_HOME/run" ${LOADGEN_ARGS:-} \
    "redfire_pair:$OUT_UPSTREAM_PORT:$OUT_PID,$IN_PID" 2>&1 | tee "$WORK/loadgen.txt" || log "loadgen failed"
fi
log "compare.sh redfire_pair:$OUT_UPSTREAM_PORT:$OUT_PID,$IN_PID (PEERS_* settings pass through)"
compare_rc=0
if [ "${BENCH_COMPARE:-1}" = 1 ]; then
  (cd "$PEERS_DIR" && ./compare.sh "redfire_pair:$OUT_UPSTREAM_PORT:$OUT_PID,$IN_PID") 2>&1 |
    tee "$WORK/compare.txt" || compare_rc=$?
else
  log "BENCH_COMPARE=0: the rig's compare.sh skipped"
fi
kill -TERM "$NOISE_PID" 2>/dev/null || true
for _ in $(seq 1 50); do [ -s "$WORK/noise.txt" ] && break; sleep 0.1; done
NOISE="unknown (see $WORK/noise.log)"
if read -r n_secs n_other n_kernel n_steal n_top < "$WORK/noise.txt" 2>/dev/null; then
  NOISE=$(awk -v s="$n_secs" -v o="$n_other" -v k="$n_kernel" -v st="$n_steal" -v top="$n_top" \
    -v n="$(nproc)" 'BEGIN { printf "%.1f CPU-s in %d s = %.2f of %d CPUs (top: %s); kernel threads %.2f CPU; steal %.2f CPU",
      o, s, o / s, n, top, k / s, st / s }')
fi

# ---- 7. after -----------------------------------------------------------------------------------
IN_RSS_AFTER=$(rss_kb "$IN_PID")
OUT_RSS_AFTER=$(rss_kb "$OUT_PID")
state() { if alive "$1"; then echo yes; else echo NO; fi; }
cat <<EOF

redfire pair after compare.sh (exit $compare_rc): $SOURCE
  sidecar  alive  idle_rss_MB  after_rss_MB  threads
  IN       $(printf '%-5s  %11s  %12s  %7s' "$(state "$IN_PID")" "$(mb "$IN_RSS_IDLE")" "$(mb "$IN_RSS_AFTER")" "$(threads "$IN_PID")")
  OUT      $(printf '%-5s  %11s  %12s  %7s' "$(state "$OUT_PID")" "$(mb "$OUT_RSS_IDLE")" "$(mb "$OUT_RSS_AFTER")" "$(threads "$OUT_PID")")
  pair     $(printf '%-5s  %11s  %12s' "" "$(mb "$(sum_kb "$IN_RSS_IDLE" "$OUT_RSS_IDLE")")" "$(mb "$(sum_kb "$IN_RSS_AFTER" "$OUT_RSS_AFTER")")")
  log lines (warn and above): IN $(grep -c . "$WORK/in.log" || true), OUT $(grep -c . "$WORK/out.log" || true), control $(grep -c . "$WORK/control.log" || true)
noise during compare.sh: load average $LOAD_BEFORE -> $(cut -d' ' -f1-3 /proc/loadavg)
  CPU used by other processes: $NOISE
  (more than a few hundredths of a CPU means something else, e.g. a build, competed with the rig:
   re-run when the rps spreads are wide)
EOF
exit "$compare_rc"
