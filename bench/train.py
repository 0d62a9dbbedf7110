"""Trainer throughput and publish -> registered-version latency.

``streamrec bench train [--events 20000] [--export-interval-s 5] [--rounds 3] [--publish-mode auto]
[--bootstrap HOST:PORT]``
starts (unless ``--bootstrap`` names one) a local Kafka broker, an in-process registry and the trainer
service loop, publishes a synthetic stream to `items`/`events` as the ingester would, and prints ONE
JSON line:

* ``events_per_s``: events trained per second by the service loop (consume + decode + prequential test +
  train + periodic checkpoints and exports), from the first batch until all ``--events`` are trained;
* ``publish_to_registered_s``: for ``--rounds`` small bursts published while the trainer is idle and
  caught up, seconds from the burst being acknowledged by Kafka to the registry listing a version whose
  training offsets include it. It is bounded below by the export interval tick (on average half of it)
  plus the export + register time, also reported;
* ``checkpoint_s_mean``: the mean seconds of one checkpoint (the trainer writes one before each export and
  every checkpoint interval; training waits for it).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path


def _publish(kafka_config, items=(), events=()) -> None:
    from services.common.kafka import PROTOBUF, make_producer
    from streamrec_proto.v1 import event_pb2

    headers = [("content-type", PROTOBUF.encode())]
    producer = make_producer(kafka_config)
    futures = []
    for it in items:
        msg = event_pb2.Item(item_id=it.item_id, title=it.title, text=it.text, categories=list(it.categories),
                             attributes=dict(it.attributes), available=it.available)
        futures.append(producer.send(kafka_config.topics.name("items"), key=it.item_id.encode(),
                                     value=msg.SerializeToString(), headers=headers))
    for e in events:
        msg = event_pb2.Event(event_id=e.event_id, user_id=e.user_id, item_id=e.item_id, type=e.type,
                              value=e.value, timestamp_ms=e.timestamp_ms)
        futures.append(producer.send(kafka_config.topics.name("events"), key=e.user_id.encode(),
                                     value=msg.SerializeToString(), headers=headers))
    producer.flush()
    for f in futures:
        f.get(timeout=60)
    producer.close()


def _end_offsets(kafka_config) -> dict[str, int]:
    from kafka import KafkaConsumer, TopicPartition

    topic = kafka_config.topics.name("events")
    consumer = KafkaConsumer(**kafka_config.client_options())
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {str(tp.partition): off for tp, off in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def _start_registry(tmp: Path, kafka_config, ca):
    from services.registry.config import RegistryConfig
    from services.registry.service import RegistryService

    return RegistryService(RegistryConfig.model_validate({
        "kafka": kafka_config.model_dump(), "metrics": {"enabled": False},
        "tls": ca.tls_config("registry").model_dump(),
        "grpc": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "registry": {"database_url": f"sqlite:///{tmp}/registry.db", "artifact_root": str(tmp / "artifacts")},
    })).start()


def _throughput(service, trained, n_events: int) -> tuple[float, float]:
    """(events/s, seconds) from the first trained batch until all ``n_events`` are trained."""
    from services.common.supervision import wait_for

    wait_for(service.ready, 300, "trainer ready")
    wait_for(lambda: trained() > 0, 300, "first batch")
    t0, n0 = time.perf_counter(), trained()
    wait_for(lambda: trained() >= n_events, 3600, "all events trained", interval_s=0.01)
    seconds = time.perf_counter() - t0
    return (n_events - n0) / seconds, seconds


def _publish_to_registered(args, kafka_config, client, model_name: str, last_ms: int) -> list[float]:
    """Seconds from publishing a burst of events to a registered version that includes them, per round."""
    from recmodel.data import Event
    from services.common.supervision import wait_for

    topic = kafka_config.topics.name("events")

    def registered_through(ends: dict[str, int]):
        for v in client.list_versions(model_name):
            got = {str(o.partition): o.offset for o in v.training_offsets if o.topic == topic}
            if all(got.get(p, 0) >= off for p, off in ends.items()):
                return v
        return None

    wait_for(lambda: registered_through(_end_offsets(kafka_config)), 600, "backlog version", interval_s=0.2)
    latencies = []
    for r in range(args.rounds):
        burst = []
        for n in range(args.burst):
            last_ms += 1000
            burst.append(Event(f"bench-{r}-{n}", f"u{n % 600}", f"i{(r * 97 + n) % 1200}", "click", 1.0, last_ms))
        start = time.perf_counter()
        _publish(kafka_config, events=burst)
        ends = _end_offsets(kafka_config)
        wait_for(lambda: registered_through(ends), 600, "a version including the burst", interval_s=0.02)
        latencies.append(time.perf_counter() - start)
    return latencies


def _kafka(args, tmp: Path):
    """(bootstrap servers, the local broker started for the run or None)."""
    if args.bootstrap:
        return args.bootstrap, None
    from services.common.localkafka import LocalKafka

    broker = LocalKafka(data_dir=tmp / "kafka", heap="768m")
    broker.start()
    return broker.bootstrap_servers, broker


def _mean_seconds(histogram) -> float | None:
    samples = histogram.collect()[0].samples
    total = sum(s.value for s in samples if s.name.endswith("_sum"))
    count = sum(s.value for s in samples if s.name.endswith("_count"))
    return round(total / count, 3) if count else None


def _has_export() -> bool:
    try:
        import recmodel.export  # noqa: F401
    except ImportError:
        return False
    return True


def run(args) -> dict:
    import torch
    from prometheus_client import CollectorRegistry

    from recmodel.data import SyntheticStream
    from services.common.config import KafkaConfig, TopicsConfig
    from services.common.kafka import ensure_topics
    from services.common.registry_client import RegistryClient
    from services.common.tls import LocalCA
    from services.trainer.config import TrainerConfig
    from services.trainer.leader import AlwaysLeader
    from services.trainer.metrics import TrainerMetrics
    from services.trainer.service import TrainerService

    tmp = Path(tempfile.mkdtemp(prefix="streamrec-bench-train-"))
    bootstrap, broker = _kafka(args, tmp)
    kafka_config = KafkaConfig(bootstrap_servers=bootstrap, topics=TopicsConfig(prefix=f"bench{uuid.uuid4().hex[:6]}."))
    ca = LocalCA(tmp / "tls")
    registry = _start_registry(tmp, kafka_config, ca)
    service = None
    try:
        ensure_topics(kafka_config)
        stream = SyntheticStream(seed=0, n_users=600, n_items=1200, n_events=args.events)
        events = list(stream.events())
        _publish(kafka_config, items=stream.items(), events=events)
        model = {"dim": args.dim, "max_len": args.max_len, "text_encoder": args.text_encoder, "hashing_dim": 64}
        config = TrainerConfig.model_validate({
            "kafka": kafka_config.model_dump(), "metrics": {"enabled": False}, "tls": ca.tls_config("trainer").model_dump(),
            "trainer": {"registry_target": registry.target, "checkpoint_dir": str(tmp / "ckpt"), "device": args.device,
                        "export_interval_s": args.export_interval_s, "publish_mode": args.publish_mode, "model": model},
        })
        metrics = TrainerMetrics(CollectorRegistry())
        service = TrainerService(config, metrics, AlwaysLeader()).start()
        events_per_s, seconds = _throughput(service, metrics.events_trained._value.get, len(events))
        with RegistryClient(registry.target, tls=ca.tls_config("operator")) as client:
            latencies = (_publish_to_registered(args, kafka_config, client, config.trainer.model_name,
                                                events[-1].timestamp_ms) if _has_export() else [])
        return {
            "bench": "train",
            "device": str(service.device),
            "torch_threads": torch.get_num_threads(),
            "model": {**model, "batch_size": config.trainer.model.batch_size, "n_layers": config.trainer.model.n_layers},
            "events": len(events),
            "events_per_s": round(events_per_s, 1),
            "train_seconds": round(seconds, 2),
            "export_interval_s": args.export_interval_s,
            "publish": "background" if service.publish_in_background else "inline",
            "export_register_s_mean": _mean_seconds(metrics.export_duration),
            "checkpoint_s_mean": _mean_seconds(metrics.checkpoint_duration),
            "checkpoints": int(metrics.checkpoints._value.get()),
            "versions_registered": int(metrics.versions_registered._value.get()),
            "publish_to_registered_s": {
                "p50": round(statistics.median(latencies), 3), "max": round(max(latencies), 3),
                "rounds": [round(x, 3) for x in latencies], "burst_events": args.burst,
            } if latencies else None,
        }
    finally:
        if service is not None:
            service.stop()
            service.wait()
        registry.stop(0)
        if broker is not None:
            broker.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamrec bench train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--export-interval-s", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=50, help="events per latency round")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--publish-mode", default="auto", choices=["auto", "inline", "background"],
                        help="where versions are judged and registered (trainer.publish_mode)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--text-encoder", default="hashing", choices=["hashing", "minilm"])
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting a local broker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
