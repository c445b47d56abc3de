#!/usr/bin/env python3
"""A small Python client for the RedFire registry (redfire.registry.v1.Registry).

It walks through the life of one instance while watching its service:

  1. opens a Watch on the service and prints every message it receives;
  2. registers an instance (``py-<pid>``) under a short lease;
  3. renews the lease through the KeepAlive bidi stream every ~500 ms for
     ``--seconds``, reporting health NOT_SERVING once midway, then SERVING;
  4. reads the service back with GetService;
  5. deregisters, waits for the Watch to show the DELETE, prints a summary.

Every line it prints starts with a fixed word so that scripts can grep it:

  watch snapshot revision=R instances=N
  registered lease=L revision=R
  keepalive report health=NOT_SERVING
  keepalive n=I lease=L ttl_ms=T
  watch PUT orders/py-123 health=SERVING revision=R
  get_service instances=N revision=R
  deregistered revision=R
  watch DELETE orders/py-123 reason=deregistered revision=R
  summary: puts=P deletes=D snapshot_instances=S

The gRPC stubs are not checked in. Generate them into ``gen/`` next to this
file, then run the client against a running ``redfire-control``:

  cd examples/python
  python -m venv .venv && .venv/bin/pip install -r requirements.txt
  mkdir -p gen && .venv/bin/python -m grpc_tools.protoc -I ../../proto --python_out=gen \\
      --grpc_python_out=gen ../../proto/redfire/registry/v1/registry.proto
  .venv/bin/python registry_client.py --target 127.0.0.1:15010 \\
      --ca-file ~/.local/share/redfire/ca/bundle.pem --service orders --seconds 4

(control's API is TLS; ``--ca-file`` is the trust bundle control writes, or
prints with ``redfire-control trust-bundle``.)

``run.sh`` does all of that (and starts the control service) for CI.

Exit status is 0 on success and 1 on any failure (an RPC error, or an
expected Watch message that never came). Every wait has a timeout, so the
client never hangs.
"""

import argparse
import os
import sys
import threading
import time

# The generated modules live in gen/redfire/registry/v1/. Putting gen/ on the
# import path lets Python find them as the (namespace) package
# `redfire.registry.v1`, which is also how the generated *_grpc.py module
# imports its sibling *_pb2.py.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gen"))

try:
    import grpc

    import control_channel
    from redfire.registry.v1 import registry_pb2 as pb
    from redfire.registry.v1 import registry_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - a setup problem, not a bug
    sys.exit(
        f"error: cannot import grpc or the generated stubs ({e}).\n"
        "Install requirements.txt and generate the stubs into gen/ "
        "(see the module docstring, or run run.sh)."
    )

# How often the lease is renewed, and the lease TTL we ask for. The TTL is a
# few renewal periods long, so one late renewal does not lose the instance.
RENEW_EVERY_S = 0.5
LEASE_TTL_MS = 2000
# Upper bound for unary calls and for waiting on one expected Watch message.
RPC_TIMEOUT_S = 5.0
WAIT_TIMEOUT_S = 5.0

_print_lock = threading.Lock()


def say(line):
    """Prints one line at once (the Watch runs on its own thread)."""
    with _print_lock:
        print(line, flush=True)


def health_name(value):
    return pb.Health.Name(value)


class Watcher:
    """Runs one Watch stream on a background thread and keeps count of what
    it saw. The main thread waits on `snapshot_seen` / `wait_for` to know when
    the stream has caught up with what it did."""

    def __init__(self, stub, service, deadline_s):
        self.service = service
        self.puts = 0
        self.deletes = 0
        self.snapshot_instances = 0
        self.error = None  # the RpcError that ended the stream, if any
        self.snapshot_seen = threading.Event()
        self._stopping = False
        self._cond = threading.Condition()
        # (type, instance key, health, reason) of every change, in order.
        self._changes = []
        # The deadline bounds the stream even if we never get to cancel it.
        self._call = stub.Watch(pb.WatchRequest(services=[service]), timeout=deadline_s)
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)

    def start(self):
        self._thread.start()

    def _run(self):
        try:
            for msg in self._call:
                self._handle(msg)
        except grpc.RpcError as e:
            # Cancelling the stream ourselves at the end is the normal way out.
            if not (self._stopping and e.code() == grpc.StatusCode.CANCELLED):
                self.error = e
        finally:
            with self._cond:
                self._cond.notify_all()
            self.snapshot_seen.set()  # never leave the main thread waiting

    def _handle(self, msg):
        kind = msg.WhichOneof("event")
        if kind == "snapshot":
            n = len(msg.snapshot.instances)
            self.snapshot_instances = n
            reset = " reset=true" if msg.snapshot.reset else ""
            say(f"watch snapshot revision={msg.revision} instances={n}{reset}")
            self.snapshot_seen.set()
            return
        change = msg.change
        inst = change.instance
        key = f"{inst.service}/{inst.instance_id}"
        if change.type == pb.PUT:
            self.puts += 1
            say(f"watch PUT {key} health={health_name(inst.health)} revision={msg.revision}")
        elif change.type == pb.DELETE:
            self.deletes += 1
            say(f"watch DELETE {key} reason={change.reason} revision={msg.revision}")
        else:
            say(f"watch UNKNOWN type={change.type} {key} revision={msg.revision}")
        with self._cond:
            self._changes.append((change.type, key, inst.health, change.reason))
            self._cond.notify_all()

    def wait_for(self, check, timeout):
        """Waits until `check(changes)` holds for the changes seen so far.
        Returns False on timeout or if the stream ended first."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                if check(self._changes):
                    return True
                left = end - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(left)

    def stop(self):
        self._stopping = True
        self._call.cancel()
        self._thread.join(timeout=WAIT_TIMEOUT_S)


def renewals(lease_id, count, stop):
    """The KeepAlive request stream: `count` renewals, RENEW_EVERY_S apart.

    Health is reported once as NOT_SERVING midway and as SERVING on the next
    renewal; every other renewal leaves it unchanged (HEALTH_UNSPECIFIED).
    gRPC pulls from this generator on its own thread, so sleeping here only
    paces the stream. `stop` ends it early if the main thread gives up.
    """
    midway = count // 2
    for n in range(count):
        if n == midway:
            health = pb.NOT_SERVING
        elif n == midway + 1:
            health = pb.SERVING
        else:
            health = pb.HEALTH_UNSPECIFIED
        if n > 0 and stop.wait(RENEW_EVERY_S):
            return
        if health != pb.HEALTH_UNSPECIFIED:
            say(f"keepalive report health={health_name(health)}")
        yield pb.KeepAliveRequest(lease_id=lease_id, health=health)


def run(args):
    # At least 3 renewals, so there is a "before", a NOT_SERVING and a SERVING.
    count = max(3, int(round(args.seconds / RENEW_EVERY_S)))

    with control_channel.open_channel(args) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            raise SystemExit(f"error: cannot connect to {args.target} within {RPC_TIMEOUT_S:.0f}s")
        stub = pb_grpc.RegistryStub(channel)

        # The Watch runs for the whole session; its deadline is a backstop.
        watcher = Watcher(stub, args.service, deadline_s=count * RENEW_EVERY_S + 60)
        watcher.start()
        try:
            lifecycle(args, stub, watcher, count)
        finally:
            watcher.stop()

    say(f"summary: puts={watcher.puts} deletes={watcher.deletes} snapshot_instances={watcher.snapshot_instances}")


def lifecycle(args, stub, watcher, count):
    """Steps (a) to (f); raises SystemExit or grpc.RpcError on failure."""
    key_id = f"py-{os.getpid()}"
    key = f"{args.service}/{key_id}"

    # (a) Wait for the Watch snapshot before changing anything, so every
    # change we cause afterwards is sure to show up on it as a delta.
    if not watcher.snapshot_seen.wait(WAIT_TIMEOUT_S) or watcher.error:
        raise SystemExit(f"error: no Watch snapshot: {describe(watcher.error) or 'timed out'}")

    # (b) Register under a short lease.
    instance = pb.Instance(
        service=args.service,
        instance_id=key_id,
        address="127.0.0.1",
        ports=pb.Ports(grpc=50051),
        metadata={"lang": "python"},
    )
    reg = stub.Register(pb.RegisterRequest(instance=instance, ttl_ms=LEASE_TTL_MS), timeout=RPC_TIMEOUT_S)
    say(f"registered lease={reg.lease_id} revision={reg.revision} ttl_ms={reg.ttl_ms}")
    expect(watcher, "PUT (registered)", any_change(lambda t, k, h, r: t == pb.PUT and k == key))

    # (c) Keep the lease alive. Each renewal gets one response; the stream
    # ends when our request generator is exhausted. The deadline bounds it.
    stop = threading.Event()
    call = stub.KeepAlive(renewals(reg.lease_id, count, stop), timeout=count * RENEW_EVERY_S + RPC_TIMEOUT_S)
    answered = 0
    try:
        for resp in call:
            answered += 1
            say(f"keepalive n={answered} lease={resp.lease_id} ttl_ms={resp.ttl_ms}")
    finally:
        stop.set()
    if answered != count:
        raise SystemExit(f"error: KeepAlive answered {answered} of {count} renewals")
    expect(watcher, "PUT health=NOT_SERVING",
           any_change(lambda t, k, h, r: t == pb.PUT and k == key and h == pb.NOT_SERVING))
    expect(watcher, "PUT health=SERVING after NOT_SERVING", serving_again(key))

    # (d) Read the service back; our instance must be in it.
    got = stub.GetService(pb.GetServiceRequest(service=args.service), timeout=RPC_TIMEOUT_S)
    say(f"get_service instances={len(got.instances)} revision={got.revision}")
    if not any(i.instance_id == key_id for i in got.instances):
        raise SystemExit(f"error: GetService does not list {key}")

    # (e) Deregister, then (f) wait for the Watch to show it.
    dereg = stub.Deregister(pb.DeregisterRequest(lease_id=reg.lease_id), timeout=RPC_TIMEOUT_S)
    say(f"deregistered revision={dereg.revision}")
    expect(watcher, "DELETE reason=deregistered",
           any_change(lambda t, k, h, r: t == pb.DELETE and k == key and r == "deregistered"))


def serving_again(key):
    """A check over the change list: a SERVING PUT after a NOT_SERVING one."""

    def check(changes):
        down = False
        for t, k, h, _ in changes:
            if t == pb.PUT and k == key:
                if h == pb.NOT_SERVING:
                    down = True
                elif h == pb.SERVING and down:
                    return True
        return False

    return check


def any_change(predicate):
    """A check over the change list: some change satisfies `predicate`."""
    return lambda changes: any(predicate(*c) for c in changes)


def expect(watcher, what, check):
    """Waits for the Watch to show `what`; fails the run if it does not."""
    if not watcher.wait_for(check, WAIT_TIMEOUT_S):
        why = describe(watcher.error) or f"not seen within {WAIT_TIMEOUT_S:.0f}s"
        raise SystemExit(f"error: watch: expected {what}: {why}")


def describe(err):
    if err is None:
        return ""
    return f"{err.code().name}: {err.details()}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    control_channel.add_arguments(p)
    p.add_argument("--service", default="orders", help="service name (DNS-1123 label)")
    p.add_argument("--seconds", type=float, default=4.0, help="how long to keep the lease alive")
    args = p.parse_args()
    try:
        run(args)
    except grpc.RpcError as e:
        # Unary calls raise the call itself; streams raise it from iteration.
        sys.exit(f"error: rpc failed: {describe(e)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
