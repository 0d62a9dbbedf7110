"""Write Items and Events to the normalised topics exactly as the ingester would; run and watch a
trainer process."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import torch
import yaml
from kafka import KafkaConsumer, TopicPartition

from services.common.kafka import PROTOBUF, make_producer
from streamrec_proto.v1 import event_pb2

HEADERS = [("content-type", PROTOBUF.encode())]


def publish_items(kafka_config, items) -> None:
    producer = make_producer(kafka_config)
    topic = kafka_config.topics.name("items")
    futures = []
    for it in items:
        msg = event_pb2.Item(item_id=it.item_id, title=it.title, text=it.text, categories=list(it.categories),
                             attributes=dict(it.attributes), available=it.available)
        futures.append(producer.send(topic, key=it.item_id.encode(), value=msg.SerializeToString(), headers=HEADERS))
    producer.flush()
    for f in futures:
        f.get(timeout=30)
    producer.close()


def publish_events(kafka_config, events) -> None:
    producer = make_producer(kafka_config)
    topic = kafka_config.topics.name("events")
    futures = []
    for e in events:
        msg = event_pb2.Event(event_id=e.event_id, user_id=e.user_id, item_id=e.item_id, type=e.type,
                              value=e.value, timestamp_ms=e.timestamp_ms, context=dict(e.context))
        futures.append(producer.send(topic, key=e.user_id.encode(), value=msg.SerializeToString(), headers=HEADERS))
    producer.flush()
    for f in futures:
        f.get(timeout=30)
    producer.close()


def end_offsets(kafka_config, key: str = "events") -> dict[str, int]:
    topic = kafka_config.topics.name(key)
    consumer = KafkaConsumer(bootstrap_servers=kafka_config.bootstrap_servers.split(","))
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {str(tp.partition): off for tp, off in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def small_model() -> dict:
    """Keeps CPU time down: dim 32, short histories, the hashing text encoder."""
    return {"dim": 32, "max_len": 10, "capacity": 2000, "batch_size": 256, "replay_batch": 32,
            "n_random_negatives": 64, "n_layers": 1, "text_encoder": "hashing", "hashing_dim": 32}


def write_config(path: Path, kafka_config, *, checkpoint_dir: Path, registry_target: str = "127.0.0.1:1",
                 metrics_port: int = 0, **trainer) -> Path:
    from tests.pki import tls_section

    doc = {
        "kafka": {"bootstrap_servers": kafka_config.bootstrap_servers,
                  "topics": {"prefix": kafka_config.topics.prefix}},
        "tls": tls_section("trainer"),
        "metrics": {"enabled": metrics_port > 0, "host": "127.0.0.1", "port": metrics_port},
        "trainer": {"registry_target": registry_target, "checkpoint_dir": str(checkpoint_dir), "device": "cpu",
                    "model": small_model(), **trainer},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def read_checkpoint(checkpoint_dir: Path) -> dict | None:
    path = Path(checkpoint_dir) / "checkpoint.pt"
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {"events_trained": state["events_trained"], **state["extra"]}


ROOT = Path(__file__).resolve().parents[3]


def start_trainer(config: Path, log: Path, **popen) -> subprocess.Popen:
    """``python -m services.trainer --config CONFIG``, its output appended to ``log``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "services.trainer", "--config", str(config)], cwd=ROOT, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, **popen)


def scrape_or_none(port: int) -> str | None:
    """The metrics page, or None while the server is not listening yet."""
    try:
        return scrape(port)
    except OSError:
        return None


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        return resp.read().decode()


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


