#!/usr/bin/env bash
# Runs the Python client examples end to end (used by CI): the registry
# client and the event bus client (events_client.py):
#
#   bash examples/python/run.sh
#
# 1. creates examples/python/.venv (if missing) and installs requirements.txt;
# 2. generates the gRPC stubs into examples/python/gen;
# 3. starts redfire-control ($REDFIRE_CONTROL_BIN, default
#    target/debug/redfire-control) on free loopback ports, with its CA and
#    trust bundle in a temporary directory, and waits for /ready;
# 4. checks that a plaintext client is refused (the API is TLS only), and
#    that a TLS client without a token is UNAUTHENTICATED on Register,
#    SetPolicy, Publish and Subscribe;
# 5. mints an operator token (`redfire-control token operator`) and runs
#    registry_client.py and events_client.py with it over TLS, verifying
#    control's certificate with the trust bundle, and checks what they
#    printed.
#
# Prints "python example: ok" on success; otherwise fails showing the output.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

CONTROL_BIN="${REDFIRE_CONTROL_BIN:-target/debug/redfire-control}"
VENV="$HERE/.venv"
GEN="$HERE/gen"
SERVICE="orders"
SECONDS_ALIVE=4

fail() {
  echo "python example: FAILED: $*" >&2
  exit 1
}

[ -x "$CONTROL_BIN" ] || fail "no control binary at $CONTROL_BIN (build it with: cargo build --bin redfire-control)"

# --- Python environment and stubs -------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"

rm -rf "$GEN"
mkdir -p "$GEN"
"$PY" -m grpc_tools.protoc -I proto --python_out="$GEN" --grpc_python_out="$GEN" \
  proto/redfire/registry/v1/registry.proto proto/redfire/events/v1/events.proto \
  proto/redfire/policy/v1/policy.proto

# --- Control service ---------------------------------------------------------
WORK="$(mktemp -d)"
CONTROL_LOG="$WORK/control.log"
BUNDLE="$WORK/bundle.pem"
CONTROL_PID=""

cleanup() {
  if [ -n "$CONTROL_PID" ] && kill -0 "$CONTROL_PID" 2>/dev/null; then
    kill -TERM "$CONTROL_PID" 2>/dev/null || true
    # Give it a moment to drain, then make sure it is gone.
    for _ in $(seq 1 50); do
      kill -0 "$CONTROL_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$CONTROL_PID" 2>/dev/null || true
    wait "$CONTROL_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Two distinct free loopback ports (both held open while choosing).
free_ports() {
  "$PY" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

# Is the admin /ready endpoint answering 200?
is_ready() {
  "$PY" - "$1" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ready", timeout=1) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

# Start the control service; retry with new ports if it dies at once (a port
# picked above may have been taken in the meantime).
ready=""
for attempt in 1 2 3; do
  read -r GRPC_PORT ADMIN_PORT < <(free_ports)
  "$CONTROL_BIN" --grpc-addr "127.0.0.1:$GRPC_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" \
    --ca-dir "$WORK/ca" --trust-bundle-file "$BUNDLE" --shutdown-grace 2s >"$CONTROL_LOG" 2>&1 &
  CONTROL_PID=$!
  for _ in $(seq 1 100); do   # up to ~10 s
    if ! kill -0 "$CONTROL_PID" 2>/dev/null; then
      break
    fi
    if is_ready "$ADMIN_PORT"; then
      ready=yes
      break
    fi
    sleep 0.1
  done
  [ -n "$ready" ] && break
  echo "control did not become ready (attempt $attempt); log:" >&2
  cat "$CONTROL_LOG" >&2 || true
  kill -KILL "$CONTROL_PID" 2>/dev/null || true
  wait "$CONTROL_PID" 2>/dev/null || true
  CONTROL_PID=""
done
[ -n "$ready" ] || fail "redfire-control never became ready"
echo "control ready: grpc=127.0.0.1:$GRPC_PORT admin=127.0.0.1:$ADMIN_PORT (pid $CONTROL_PID)"

# --- A plaintext client is refused ---------------------------------------------
set +e
PLAIN_OUTPUT="$("$PY" - "127.0.0.1:$GRPC_PORT" <<'EOF' 2>&1
import sys
import grpc
sys.path.insert(0, "examples/python/gen")
from redfire.registry.v1 import registry_pb2 as pb, registry_pb2_grpc as pb_grpc
with grpc.insecure_channel(sys.argv[1]) as ch:
    try:
        pb_grpc.RegistryStub(ch).ListServices(pb.ListServicesRequest(), timeout=3)
        print("plaintext: ANSWERED")
    except grpc.RpcError as e:
        print(f"plaintext: refused {e.code().name}")
EOF
)"
set -e
echo "$PLAIN_OUTPUT"

# --- TLS without a token: UNAUTHENTICATED ----------------------------------------
set +e
NOTOKEN_OUTPUT="$("$PY" - "127.0.0.1:$GRPC_PORT" "$BUNDLE" <<'EOF' 2>&1
import sys
import grpc
sys.path.insert(0, "examples/python/gen")
from redfire.registry.v1 import registry_pb2 as rpb, registry_pb2_grpc as rgrpc
from redfire.policy.v1 import policy_pb2 as ppb, policy_pb2_grpc as pgrpc
from redfire.events.v1 import events_pb2 as epb, events_pb2_grpc as egrpc
roots = open(sys.argv[2], "rb").read()
creds = grpc.ssl_channel_credentials(root_certificates=roots)
with grpc.secure_channel(sys.argv[1], creds, options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
    instance = rpb.Instance(service="orders", instance_id="x", address="127.0.0.1")
    opening = epb.SubscribeRequest(open=epb.Open(topics=["orders"], group="g", consumer="c"))
    calls = {
        "Register": lambda: rgrpc.RegistryStub(ch).Register(rpb.RegisterRequest(instance=instance), timeout=3),
        "SetPolicy": lambda: pgrpc.PolicyStub(ch).Set(ppb.SetRequest(service="orders", toml=""), timeout=3),
        "Publish": lambda: egrpc.EventsStub(ch).Publish(epb.PublishRequest(topic="orders"), timeout=3),
        "Subscribe": lambda: next(egrpc.EventsStub(ch).Subscribe(iter([opening]), timeout=3)),
    }
    for name, call in calls.items():
        try:
            call()
            print(f"no token: {name} ANSWERED")
        except grpc.RpcError as e:
            print(f"no token: {name} refused {e.code().name}")
EOF
)"
set -e
echo "$NOTOKEN_OUTPUT"

# --- An operator token ------------------------------------------------------------
TOKEN="$WORK/operator.token"
"$CONTROL_BIN" --ca-dir "$WORK/ca" token operator --subject python-example \
  --role registry-admin --role events-admin --ttl 10m >"$TOKEN" || fail "token operator failed"

# --- Client ------------------------------------------------------------------
# The client bounds all its own waits; `timeout` is only a backstop.
set +e
OUTPUT="$(timeout 60 "$PY" "$HERE/registry_client.py" \
  --target "127.0.0.1:$GRPC_PORT" --ca-file "$BUNDLE" --token-file "$TOKEN" --service "$SERVICE" \
  --seconds "$SECONDS_ALIVE" 2>&1)"
STATUS=$?
set -e
echo "$OUTPUT"

problems=()
grep -qE '^plaintext: refused UNAVAILABLE$' <<<"$PLAIN_OUTPUT" || problems+=("a plaintext client was not refused")
for call in Register SetPolicy Publish Subscribe; do
  grep -qE "^no token: $call refused UNAUTHENTICATED$" <<<"$NOTOKEN_OUTPUT" \
    || problems+=("$call without a token was not UNAUTHENTICATED")
done
[ "$STATUS" -eq 0 ] || problems+=("client exited with status $STATUS")
grep -qE '^registered lease=[0-9]+ ' <<<"$OUTPUT" || problems+=("no 'registered lease=' line")
grep -qE "^watch PUT $SERVICE/py-[0-9]+ health=NOT_SERVING " <<<"$OUTPUT" \
  || problems+=("no 'watch PUT ... health=NOT_SERVING' line")
grep -qE "^watch DELETE $SERVICE/py-[0-9]+ reason=deregistered " <<<"$OUTPUT" \
  || problems+=("no 'watch DELETE ... reason=deregistered' line")
grep -qE '^summary: puts=[0-9]+ deletes=[0-9]+ snapshot_instances=[0-9]+$' <<<"$OUTPUT" \
  || problems+=("no 'summary:' line")

# --- Event bus client ---------------------------------------------------------
set +e
EVENTS_OUTPUT="$(timeout 60 "$PY" "$HERE/events_client.py" --target "127.0.0.1:$GRPC_PORT" --ca-file "$BUNDLE" \
  --token-file "$TOKEN" --topic orders 2>&1)"
EVENTS_STATUS=$?
set -e
echo "$EVENTS_OUTPUT"
[ "$EVENTS_STATUS" -eq 0 ] || problems+=("events client exited with status $EVENTS_STATUS")
grep -qE '^retried order.paid position=[0-9]+-[0-9]+ duplicate=True$' <<<"$EVENTS_OUTPUT" \
  || problems+=("no 'retried ... duplicate=True' line")
grep -qE '^delivery order.paid position=[0-9]+-[0-9]+ count=2 -> ack$' <<<"$EVENTS_OUTPUT" \
  || problems+=("no redelivery of order.paid with count=2")
grep -qE '^describe length=3 group=billing pending=0 lag=0$' <<<"$EVENTS_OUTPUT" \
  || problems+=("no 'describe ... pending=0 lag=0' line")
grep -qE '^summary: published=3 duplicates=1 deliveries=4 redelivered=1$' <<<"$EVENTS_OUTPUT" \
  || problems+=("no events 'summary:' line")

if [ "${#problems[@]}" -gt 0 ]; then
  {
    echo "---- control log (last 40 lines); client output is above ----"
    tail -n 40 "$CONTROL_LOG" || true
    echo "-----------------------"
  } >&2
  summary="$(printf '%s; ' "${problems[@]}")"
  fail "${summary%; }"
fi
echo "python example: ok"
