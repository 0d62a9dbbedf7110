"""Kafka plumbing over kafka-python.

- ``make_producer``: acks=all, idempotent, ordered per partition. No service uses it: every producer in
  services/ is librdkafka's (services/common/rdkafka.py ``Producer``); it stays for benchmarks and tests.
- ``make_consumer``: manual commits; ``commit_processed`` commits exactly the offsets processed
  (next offset to read), so offsets move only after the output they produced is acknowledged.
- ``subscribe``: joins the group only once the consumer's metadata has every topic's partitions.
- ``ensure_topics``: creates missing topics (compacted where the design says so).

Every producer and consumer of the services uses librdkafka instead (services/common/rdkafka.py), configured
from the same section; kafka-python remains for administration (topics, ACLs) and tests.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Mapping

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from services.common.config import KafkaConfig

logger = logging.getLogger(__name__)

CONTENT_TYPE_HEADER = "content-type"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# Topics whose records are upserts keyed by id: the log keeps only the latest per key.
COMPACTED_TOPIC_KEYS = ("items", "items_raw", "model_versions")


def make_producer(config: KafkaConfig, **overrides) -> KafkaProducer:
    opts = {
        **config.client_options(),
        "acks": "all",
        "enable_idempotence": True,
        "max_in_flight_requests_per_connection": 5,
        "retries": 2**31 - 1,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "compression_type": None,
        **overrides,
    }
    return KafkaProducer(**opts)


def make_consumer(
    config: KafkaConfig,
    topics: Iterable[str] | None,
    group_id: str | None,
    **overrides,
) -> KafkaConsumer:
    """A consumer that never auto-commits: callers commit with ``commit_processed``."""
    opts = {
        **config.client_options(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 2000,
        "fetch_max_wait_ms": 100,
        "session_timeout_ms": 10000,
        "heartbeat_interval_ms": 3000,
        **overrides,
    }
    consumer = KafkaConsumer(**opts)
    if topics:
        subscribe(consumer, topics)
    return consumer


def subscribe(consumer: KafkaConsumer, topics: Iterable[str], timeout_s: float = 60.0) -> None:
    """Subscribe, then fetch metadata until every topic has partitions, before the first poll joins the group.

    The group leader assigns from the metadata it holds at the join: a topic whose metadata has not
    reached it yet (a topic created a moment ago, a request held back by the client's retry backoff)
    gets no partitions. The rejoin that the later metadata triggers can then stall in kafka-python
    when a poll times out mid-join (the Java client's KAFKA-9815), so one member idles for good.
    Asking for metadata after ``subscribe`` also refreshes the group's view of it.
    """
    topics = list(topics)
    consumer.subscribe(topics)
    missing = _await_partitions(consumer, topics, time.monotonic() + timeout_s)
    if missing:
        # Subscribed anyway: the client keeps asking while a topic is unknown, and joins once it appears.
        logger.warning("subscribed topics have no partitions yet", extra={"topics": missing})


def _await_partitions(consumer: KafkaConsumer, topics: list[str], deadline: float) -> list[str]:
    """Refresh ``consumer``'s metadata until every topic has partitions or ``deadline``; -> topics still missing.

    Each round is one bounded metadata request (``bootstrap(refresh=True)``), so an unreachable
    cluster costs the deadline, not forever; it also feeds the group coordinator's view of the
    subscribed topics.
    """
    missing = topics
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        try:
            consumer.bootstrap(timeout_ms=max(100, min(remaining_ms, 10_000)), refresh=True)
            # Known topics come from the cache; an unknown one costs a metadata request to the
            # broker that has just answered.
            missing = [t for t in topics if not consumer.partitions_for_topic(t)]
        except KafkaError as exc:
            logger.debug("metadata request failed; retrying", extra={"error": str(exc)})
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.2)


def commit_processed(consumer: KafkaConsumer, next_offsets: Mapping[TopicPartition, int]) -> None:
    """Commit ``next_offsets`` (the offset after the last processed record, per partition) and wait for the
    answer; a failure is raised."""
    if not next_offsets:
        return
    consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in next_offsets.items()}, timeout_ms=10_000)


def topic_configs(config: KafkaConfig) -> dict[str, dict[str, str]]:
    """Every topic the system uses, with its topic-level settings."""
    topics = config.topics
    out = {}
    for key in ("events_raw", "items_raw", "events", "items", "dlq", "model_versions"):
        settings = {"cleanup.policy": "compact"} if key in COMPACTED_TOPIC_KEYS else {}
        out[topics.name(key)] = settings
    return out


def ensure_topics(config: KafkaConfig, names: Iterable[str] | None = None, timeout_s: float = 60.0) -> None:
    """Create the missing ones of ``names`` (default: all topics) and wait until they have leaders."""
    wanted = topic_configs(config)
    if names is not None:
        wanted = {n: wanted.get(n, {}) for n in names}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(**config.client_options())
            break
        except KafkaError:
            if time.monotonic() > deadline:
                from services.common.rdkafka import check_access

                check_access(config, timeout_s=5)  # KafkaAccessError saying why, where the cause is plain
                raise
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(name, config.topics.partitions, config.topics.replication_factor, topic_configs=settings)
            for name, settings in wanted.items()
            if name not in existing
        ]
        if new:
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # another replica created it first
            logger.info("created topics", extra={"topics": [t.name for t in new]})
        while time.monotonic() < deadline:
            described = admin.describe_topics(list(wanted))
            if all(t.get("error_code", 0) == 0 and t.get("partitions") and all(
                p.get("leader_id", -1) >= 0 for p in t["partitions"]) for t in described):
                return
            time.sleep(0.2)
        raise KafkaError(f"topics {sorted(wanted)} have no leaders after {timeout_s}s")
    finally:
        admin.close()


def partitions_for(consumer: KafkaConsumer, topic: str, timeout_s: float = 30.0) -> list[TopicPartition]:
    """Every partition of ``topic`` (for ``assign``), waiting up to ``timeout_s`` for its metadata."""
    if not _await_partitions(consumer, [topic], time.monotonic() + timeout_s):
        return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    raise KafkaError(f"topic {topic} has no partitions (does it exist?)")


def header(headers: Iterable[tuple[str, bytes]] | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key.lower() == name:
            return value
    return None
