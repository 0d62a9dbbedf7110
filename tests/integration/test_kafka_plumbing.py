"""Produce and consume through the real broker with the shared Kafka plumbing."""

from __future__ import annotations

import time

import pytest

from services.common.kafka import (
    commit_processed,
    ensure_topics,
    make_consumer,
    make_producer,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _produce(config, topic: str, n: int, start: int = 0) -> None:
    producer = make_producer(config)
    futures = [producer.send(topic, key=f"k{i % 11}".encode(), value=str(i).encode()) for i in range(start, start + n)]
    producer.flush()
    for f in futures:
        f.get(timeout=30)  # acks=all: every record acknowledged
    producer.close()


def _drain(consumer, want: int, timeout_s: float = 90.0) -> list:
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for records in consumer.poll(200).values():
            got.extend(records)
    return got


def test_topics_are_created_with_compaction_where_keyed_by_id(kafka_config):
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    ensure_topics(kafka_config)
    ensure_topics(kafka_config)  # idempotent: a second replica starting finds them there
    admin = KafkaAdminClient(bootstrap_servers=kafka_config.bootstrap_servers)
    try:
        names = set(admin.list_topics())
        for key in ("events_raw", "items_raw", "events", "items", "dlq", "model_versions"):
            assert kafka_config.topics.name(key) in names
        res = admin.describe_configs([
            ConfigResource(ConfigResourceType.TOPIC, kafka_config.topics.name("items")),
            ConfigResource(ConfigResourceType.TOPIC, kafka_config.topics.name("events")),
        ])
        # Only topic-level overrides are listed; a topic without one has the broker default, "delete".
        policies = {
            name: entries.get("cleanup.policy", {"value": "delete"})["value"]
            for name, entries in res["topic"].items()
        }
        assert policies[kafka_config.topics.name("items")] == "compact"
        assert policies[kafka_config.topics.name("events")] == "delete"
    finally:
        admin.close()


def test_two_group_members_share_partitions_and_see_every_record_once(kafka_config):
    topic = kafka_config.topics.name("events")
    ensure_topics(kafka_config, [topic])
    group = kafka_config.topics.prefix + "group"
    a = make_consumer(kafka_config, [topic], group)
    b = make_consumer(kafka_config, [topic], group)
    try:
        # Both members must have joined before records flow, or one would take every partition. The group
        # has settled only when the two assignments split the partitions: a member whose rejoin a short poll
        # cut off still reports the generation before, every partition, while the other already has its share.
        def settled():
            a.poll(100)
            b.poll(100)
            mine, theirs = a.assignment(), b.assignment()
            return bool(mine and theirs and not mine & theirs
                        and len(mine | theirs) == kafka_config.topics.partitions)

        wait_for(settled, 90, "both members to get a disjoint share of every partition", interval_s=0)

        _produce(kafka_config, topic, 300)
        seen: list = []

        def all_seen():
            for c in (a, b):
                for records in c.poll(100).values():
                    seen.extend(records)
            return len(seen) >= 300

        wait_for(all_seen, 90, "300 records across both members", interval_s=0)
        values = sorted(int(r.value) for r in seen)
        assert values == list(range(300))
        assert {r.partition for r in seen} == set(range(kafka_config.topics.partitions))
    finally:
        a.close()
        b.close()


def test_a_member_subscribing_to_a_topic_created_a_moment_ago_gets_every_partition(kafka_config):
    # The topic is created without waiting for it, as an operator's script or another replica might.
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    topic = kafka_config.topics.name("events")
    admin = KafkaAdminClient(bootstrap_servers=kafka_config.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, kafka_config.topics.partitions, 1)])
    finally:
        admin.close()
    consumer = make_consumer(kafka_config, [topic], kafka_config.topics.prefix + "fresh")
    try:
        # Short polls, like the ingester's: a join cut short by the poll timeout must still finish.
        wait_for(lambda: consumer.poll(50) is not None and len(consumer.assignment()) == kafka_config.topics.partitions,
                 90, "the member to own every partition", interval_s=0)
        _produce(kafka_config, topic, 50)
        assert sorted(int(r.value) for r in _drain(consumer, 50)) == list(range(50))
    finally:
        consumer.close(autocommit=False)


def test_commit_after_processing_survives_restart_without_loss_or_gap(kafka_config):
    topic = kafka_config.topics.name("events")
    ensure_topics(kafka_config, [topic])
    group = kafka_config.topics.prefix + "restart"
    _produce(kafka_config, topic, 200)

    # First run: process 120 records' worth (whatever the polls give), commit only what was processed,
    # then "crash" (close without committing the rest of what was fetched).
    first = make_consumer(kafka_config, [topic], group, max_poll_records=40)
    processed: list[int] = []
    try:
        while len(processed) < 120:
            batch = first.poll(500)
            next_offsets = {}
            for tp, records in batch.items():
                for r in records:
                    processed.append(int(r.value))
                next_offsets[tp] = records[-1].offset + 1
            commit_processed(first, next_offsets)
        # fetched but unprocessed: read one more batch and drop it without committing
        first.poll(500)
    finally:
        first.close(autocommit=False)

    _produce(kafka_config, topic, 100, start=200)
    second = make_consumer(kafka_config, [topic], group)
    try:
        rest = _drain(second, 300 - len(processed))
    finally:
        second.close(autocommit=False)
    got = processed + [int(r.value) for r in rest]
    assert sorted(got) == list(range(300)), "every record processed exactly once across the restart"
