#!/usr/bin/env python3
"""A small Python client for the RedFire event bus (redfire.events.v1.Events).

It plays an order service and a billing consumer on one topic:

  1. publishes three domain events (order.created, order.paid, order.shipped)
     as one batch, the second with an idempotency key, then retries that
     publish: the retry is reported as a duplicate and stored nothing;
  2. opens a Subscribe stream (consumer group ``billing``), nacks the first
     delivery of order.paid (it comes back with delivery count 2) and acks
     everything else;
  3. describes the topic: the group has nothing pending.

Every line it prints starts with a fixed word so that scripts can grep it:

  published order.created position=P duplicate=False
  retried order.paid position=P duplicate=True
  delivery order.paid position=P count=1 -> nack
  delivery order.paid position=P count=2 -> ack
  describe length=3 group=billing pending=0 lag=0
  summary: published=3 duplicates=1 deliveries=4 redelivered=1

Stubs: generate them into ``gen/`` as in registry_client.py (run.sh does it
for both files). Exit status 0 on success, 1 on any failure; every wait has
a timeout.
"""

import argparse
import json
import os
import queue
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gen"))

try:
    import grpc

    import control_channel
    from redfire.events.v1 import events_pb2 as pb
    from redfire.events.v1 import events_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - a setup problem, not a bug
    sys.exit(f"error: cannot import grpc or the generated stubs ({e}); run run.sh")

RPC_TIMEOUT_S = 5.0
STREAM_TIMEOUT_S = 20.0


def event(kind, order_id, data):
    return pb.Event(
        type=kind,
        source="python-orders",
        subject=order_id,
        aggregate_type="Order",
        datacontenttype="application/json",
        data=json.dumps(data).encode(),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    control_channel.add_arguments(ap)
    ap.add_argument("--topic", default="orders")
    args = ap.parse_args()

    with control_channel.open_channel(args) as channel:
        stub = pb_grpc.EventsStub(channel)
        order = f"order-{os.getpid()}"
        paid = pb.PublishEntry(event=event("order.paid", order, {"amount": "86000.00"}), idempotency_key=f"{order}/paid")
        batch = [
            pb.PublishEntry(event=event("order.created", order, {"symbol": "BTC-USD", "qty": 2})),
            paid,
            pb.PublishEntry(event=event("order.shipped", order, {"carrier": "ups"})),
        ]
        r = stub.Publish(pb.PublishRequest(topic=args.topic, events=batch), timeout=RPC_TIMEOUT_S)
        for entry, res in zip(batch, r.results):
            print(f"published {entry.event.type} position={res.position} duplicate={res.duplicate}", flush=True)
        retry = stub.Publish(pb.PublishRequest(topic=args.topic, events=[paid]), timeout=RPC_TIMEOUT_S)
        res = retry.results[0]
        print(f"retried order.paid position={res.position} duplicate={res.duplicate}", flush=True)
        if not res.duplicate or res.position != r.results[1].position:
            print("error: the retried publish was stored again", file=sys.stderr)
            return 1

        # Subscribe: requests go through a queue the stream reads from.
        commands = queue.Queue()
        commands.put(pb.SubscribeRequest(open=pb.Open(
            topics=[args.topic], group="billing", consumer="py-billing", max_in_flight=10,
            start=pb.START_FROM_EARLIEST)))

        def requests():
            while True:
                cmd = commands.get()
                if cmd is None:
                    return
                yield cmd

        stream = stub.Subscribe(requests(), timeout=STREAM_TIMEOUT_S)
        deliveries, redelivered, acked = 0, 0, 0
        try:
            for msg in stream:
                kind = msg.WhichOneof("message")
                if kind == "opened":
                    print(f"opened visibility_timeout_ms={msg.opened.visibility_timeout_ms} "
                          f"max_deliveries={msg.opened.max_deliveries}", flush=True)
                    continue
                if kind == "error":
                    print(f"error {msg.error.code} {msg.error.message}", file=sys.stderr)
                    return 1
                d = msg.delivery
                deliveries += 1
                if d.delivery_count > 1:
                    redelivered += 1
                if d.event.type == "order.paid" and d.delivery_count == 1:
                    print(f"delivery {d.event.type} position={d.position} count={d.delivery_count} -> nack", flush=True)
                    commands.put(pb.SubscribeRequest(nack=pb.Nack(
                        topic=d.topic, position=d.position, reason="ledger busy")))
                    continue
                print(f"delivery {d.event.type} position={d.position} count={d.delivery_count} -> ack", flush=True)
                commands.put(pb.SubscribeRequest(ack=pb.Ack(topic=d.topic, position=d.position)))
                acked += 1
                if acked == 3:
                    break
        finally:
            commands.put(None)  # half-close: the server applies the acks, then ends the stream
            for _ in stream:
                pass

        desc = stub.DescribeTopic(pb.DescribeTopicRequest(topic=args.topic), timeout=RPC_TIMEOUT_S)
        for g in desc.groups:
            print(f"describe length={desc.length} group={g.name} pending={g.pending} lag={g.lag}", flush=True)
        print(f"summary: published={len(batch)} duplicates=1 deliveries={deliveries} redelivered={redelivered}",
              flush=True)
        return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(1)
