"""``streamrec bench freshness``: how fast the local stack reacts to a new event.

(a) publish -> the user's history reflects it in ``Recommend`` (ms): the probe takes the user's top
    item, publishes a click on it, and polls ``Recommend`` until the item drops out (seen items are
    filtered), so the time covers ingester, ``events`` topic, history follower and serving.
(b) publish -> a served model version trained on the event (s): the probe finds the event's offset
    on ``events`` and polls until the version served by inference was trained past that offset.

Starts its own stack (on free ports, in a temporary directory) with a steady demo stream.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from kafka import TopicPartition

from services.common.grpc import open_channel
from services.common.kafka import make_consumer, make_producer
from services.common.localkafka.broker import free_port
from streamrec_proto.v1 import event_pb2, recommender_pb2, recommender_pb2_grpc


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _publish_click(stack, user_id: str, item_id: str) -> str:
    from services.stack.demo import _JSON_HEADERS

    event_id = f"probe-{uuid.uuid4().hex}"
    body = json.dumps({"event_id": event_id, "user_id": user_id, "item_id": item_id, "type": "click",
                       "timestamp_ms": int(time.time() * 1000)}).encode()
    producer = make_producer(stack.kafka_config, linger_ms=0)
    producer.send(stack.kafka_config.topics.name("events_raw"), key=user_id.encode(), value=body,
                  headers=_JSON_HEADERS).get(timeout=10)
    producer.close()
    return event_id


def _history_probe(stub, stack, user_id: str, timeout_s: float) -> float | None:
    top = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=10), timeout=5)
    if not top.items:
        return None
    item = top.items[0].item_id
    start = time.perf_counter()
    _publish_click(stack, user_id, item)
    while time.perf_counter() - start < timeout_s:
        resp = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=10), timeout=5)
        if item not in {it.item_id for it in resp.items}:
            return (time.perf_counter() - start) * 1000
        time.sleep(0.01)
    return None


def _find_offset(stack, event_id: str, since: dict, timeout_s: float = 30.0) -> tuple[int, int] | None:
    consumer = make_consumer(stack.kafka_config, None, None)
    try:
        parts = list(since)
        consumer.assign(parts)
        for tp, off in since.items():
            consumer.seek(tp, off)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for tp, records in consumer.poll(200).items():
                for r in records:
                    if event_pb2.Event.FromString(r.value).event_id == event_id:
                        return tp.partition, r.offset
    finally:
        consumer.close()
    return None


def _model_probe(stub, stack, registry, user_id: str, item_id: str, timeout_s: float) -> float | None:
    topic = stack.kafka_config.topics.name("events")
    consumer = make_consumer(stack.kafka_config, None, None)
    parts = [TopicPartition(topic, p) for p in range(stack.options.partitions)]
    ends = consumer.end_offsets(parts)
    consumer.close()
    start = time.perf_counter()
    event_id = _publish_click(stack, user_id, item_id)
    found = _find_offset(stack, event_id, ends)
    if found is None:
        return None
    partition, offset = found
    checked: dict[int, bool] = {}
    while time.perf_counter() - start < timeout_s:
        version = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=1), timeout=5).model_version
        if version and version not in checked:
            mv = registry.get_version(stack.options.model_name, version)
            checked[version] = any(o.topic == topic and o.partition == partition and o.offset > offset
                                   for o in mv.training_offsets)
        if version and checked.get(version):
            return time.perf_counter() - start
        time.sleep(0.2)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamrec bench freshness", description=__doc__)
    p.add_argument("--probes", type=int, default=20, help="history probes (a)")
    p.add_argument("--model-probes", type=int, default=3, help="model probes (b)")
    p.add_argument("--rate", type=float, default=100.0, help="background demo events per second")
    p.add_argument("--export-interval", type=float, default=10.0)
    p.add_argument("--work-dir", type=Path, default=None)
    args = p.parse_args(argv)

    from recmodel.data import SyntheticStream
    from services.common.registry_client import RegistryClient
    from services.stack.demo import DemoPublisher
    from services.stack.stack import LocalStack, StackOptions, StackPorts

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    ports = StackPorts(kafka=free_port(), registry_grpc=free_port(), inference_grpc=free_port(),
                       registry_metrics=free_port(), inference_metrics=free_port(),
                       ingester_metrics=free_port(), trainer_metrics=free_port(), prometheus=free_port())
    stack = LocalStack(StackOptions(work_dir=work, ports=ports, export_interval_s=args.export_interval, fresh=True))
    stream = SyntheticStream(seed=11)
    history_ms: list[float] = []
    model_s: list[float] = []
    wall = time.monotonic()
    with stack:
        publisher = DemoPublisher(stack.kafka_config, stream.items(), stream.events(), rate=args.rate).start()
        try:
            stack.wait_serving(600)
            users = sorted({e.user_id for e in stream.events()})[: args.probes]
            with open_channel(stack.services["inference"].grpc_target, stack.tls_for("app")) as channel, \
                    RegistryClient(stack.services["registry"].grpc_target, tls=stack.tls_for("operator")) as registry:
                stub = recommender_pb2_grpc.RecommenderStub(channel)
                for user in users:
                    ms = _history_probe(stub, stack, user, timeout_s=10)
                    if ms is not None:
                        history_ms.append(ms)
                for user in users[: args.model_probes]:
                    item = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=1), timeout=5).items[0].item_id
                    s = _model_probe(stub, stack, registry, user, item, timeout_s=10 * args.export_interval + 120)
                    if s is not None:
                        model_s.append(s)
        except grpc.RpcError as exc:
            print(f"streamrec bench freshness: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        finally:
            publisher.stop()
    result = {
        "bench": "freshness",
        "history_visible_ms": {
            "p50": round(statistics.median(history_ms), 1) if history_ms else None,
            "p99": round(_percentile(history_ms, 0.99), 1) if history_ms else None,
            "n": len(history_ms), "probes": len(users),
        },
        "model_trained_and_served_s": {
            "p50": round(statistics.median(model_s), 1) if model_s else None,
            "max": round(max(model_s), 1) if model_s else None,
            "n": len(model_s), "probes": args.model_probes,
        },
        "export_interval_s": args.export_interval,
        "background_rate_eps": args.rate,
        "seconds": round(time.monotonic() - wall, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
