"""services.common.rdkafka.PartitionReader (inference's history follower) against the real broker."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import NewPartitions

from services.common.kafka import ensure_topics, make_producer
from services.common.rdkafka import PartitionReader
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _produce(config, topic: str, n: int, start: int = 0) -> None:
    producer = make_producer(config)
    futures = [producer.send(topic, key=f"k{i % 11}".encode(), value=str(i).encode()) for i in range(start, start + n)]
    producer.flush()
    for f in futures:
        f.get(timeout=30)
    producer.close()


def _read_all(reader: PartitionReader, want: int, timeout_s: float = 60.0) -> list[int]:
    got: list[int] = []

    def more() -> bool:
        for partition, records in reader.poll(200).items():
            got.extend(int(r.value()) for r in records)
            reader.advance({partition: records[-1].offset() + 1})
        return len(got) >= want

    wait_for(more, timeout_s, f"{want} records", interval_s=0)
    return got


def test_reads_every_record_from_the_given_offsets_and_its_lag_reaches_zero(kafka_config):
    topic = kafka_config.topics.name("dlq")
    ensure_topics(kafka_config, [topic])
    _produce(kafka_config, topic, 90)
    reader = PartitionReader(kafka_config, topic)
    try:
        reader.assign({0: 5})  # partition 0 from offset 5, the others from their start
        assert reader.positions[0] == 5 and all(off == 0 for p, off in reader.positions.items() if p != 0)
        got = _read_all(reader, 85)
        assert len(got) == len(set(got)) == 85  # nothing twice
        assert reader.lag() == {p: 0 for p in reader.positions}
        _produce(kafka_config, topic, 10, start=90)
        assert sum(reader.lag().values()) == 10  # acknowledged, not yet read
        assert sorted(_read_all(reader, 10)) == list(range(90, 100))  # and what arrives later
    finally:
        reader.close()


def test_starts_at_the_log_start_when_retention_removed_the_offset(kafka_config):
    topic = kafka_config.topics.name("dlq")
    ensure_topics(kafka_config, [topic])
    _produce(kafka_config, topic, 60)
    admin = KafkaAdminClient(bootstrap_servers=kafka_config.bootstrap_servers)
    reader = PartitionReader(kafka_config, topic)
    try:
        reader.assign()
        ends = reader.end_offsets()
        assert ends == reader.lag() and sum(ends.values()) == 60
        admin.delete_records({TopicPartition(topic, p): end // 2 for p, end in ends.items()})
        reader.assign({p: 0 for p in ends})
        assert reader.positions == {p: end // 2 for p, end in ends.items()}
        got = [int(r.value()) for records in reader.read_to(ends, 60) for r in records]
        assert not reader.behind(ends) and reader.positions == ends
        assert len(got) == len(set(got)) == sum(end - end // 2 for end in ends.values())
    finally:
        reader.close()
        admin.close()


def test_seek_forward_skips_ahead_never_back(kafka_config):
    topic = kafka_config.topics.name("dlq")
    ensure_topics(kafka_config, [topic])
    _produce(kafka_config, topic, 60)
    reader = PartitionReader(kafka_config, topic)
    try:
        reader.assign()
        ends = reader.lag()
        busiest = max(ends, key=ends.get)
        reader.seek_forward({busiest: ends[busiest] - 1, 999: 5})  # an unknown partition is ignored
        reader.seek_forward({busiest: 0})  # behind the position: no move
        assert reader.positions[busiest] == ends[busiest] - 1
        got = _read_all(reader, sum(ends.values()) - (ends[busiest] - 1))
        assert len(got) == sum(ends.values()) - (ends[busiest] - 1)
        assert reader.lag() == {p: 0 for p in reader.positions}
    finally:
        reader.close()


def test_picks_up_partitions_added_later(kafka_config):
    topic = kafka_config.topics.name("dlq")
    ensure_topics(kafka_config, [topic])
    reader = PartitionReader(kafka_config, topic)
    admin = KafkaAdminClient(bootstrap_servers=kafka_config.bootstrap_servers)
    try:
        reader.assign()
        before = set(reader.positions)
        admin.create_partitions({topic: NewPartitions(total_count=len(before) + 2)})
        wait_for(reader.refresh_partitions, 30, "the new partitions")
        assert len(reader.positions) == len(before) + 2
        _produce(kafka_config, topic, 100)
        seen: set[int] = set()
        wait_for(lambda: seen.update(reader.poll(200)) or len(seen) == len(before) + 2, 60,
                 "records on every partition", interval_s=0)
    finally:
        reader.close()
        admin.close()


def test_a_poll_returns_a_lone_record_at_once_and_a_burst_in_order_each_record_once(kafka_config):
    # A lone record on a quiet topic must not wait for a batch of max_poll_records to fill (librdkafka's
    # consume(n, timeout) alone would wait the whole timeout).
    topic = kafka_config.topics.name("dlq")
    ensure_topics(kafka_config, [topic])
    reader = PartitionReader(kafka_config, topic, max_poll_records=5000, **{"fetch.wait.max.ms": 10_000})
    producer = make_producer(kafka_config)
    try:
        reader.assign()
        assert reader.poll(200) == {}
        started = time.monotonic()
        threading.Timer(0.3, lambda: producer.send(topic, key=b"k", value=b"0", partition=0).get(30)).start()
        first = reader.poll(60_000)
        assert [r.value() for r in first[0]] == [b"0"]
        assert time.monotonic() - started < 30  # not the poll's 60 s, nor the fetch's 10 s
        reader.advance({0: first[0][-1].offset() + 1})
        for i in range(1, 51):
            producer.send(topic, key=b"k", value=str(i).encode(), partition=0)
        producer.flush()
        got = []
        wait_for(lambda: got.extend(r.value() for rs in reader.poll(1000).values() for r in rs) or len(got) >= 50,
                 60, "the 50 records")
        assert got == [str(i).encode() for i in range(1, 51)]  # in order, each once
    finally:
        producer.close()
        reader.close()


@contextlib.contextmanager
def _own_broker(tmp_path):
    """A broker of the test's own (it is killed), with 30 records on its `events`; -> (broker, config, topic)."""
    from services.common.config import KafkaConfig, TopicsConfig
    from services.common.localkafka import LocalKafka

    broker = LocalKafka(data_dir=tmp_path / "kafka", heap="256m").start()
    try:
        config = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topics=TopicsConfig(prefix="own."))
        topic = config.topics.name("events")
        ensure_topics(config, [topic])
        _produce(config, topic, 30)
        yield broker, config, topic
    finally:
        broker.cleanup()


def test_commit_and_close_return_when_the_broker_died_after_the_reader_knew_it(tmp_path):
    # A synchronous commit to a coordinator that died waited forever, and a stopping trainer with it.
    from services.common import rdkafka

    with _own_broker(tmp_path) as (broker, config, topic):
        reader = PartitionReader(config, topic, group_id="dying-trainer")
        reader.assign()
        _read_all(reader, 30)
        reader.commit()  # the coordinator is known from here on
        broker.kill()
        started = time.monotonic()
        reader.commit()
        reader.close()
        assert time.monotonic() - started < rdkafka.BLOCKING_CALL_S + 10


def test_a_reader_whose_broker_went_away_keeps_its_place_and_reads_on_once_it_is_back(tmp_path, caplog):
    # Looking for new partitions while the broker is away used to raise, and ended the trainer's training loop.
    import logging

    from services.common import rdkafka
    from services.trainer.stream import ItemReader

    with _own_broker(tmp_path) as (broker, config, topic):
        reader = PartitionReader(config, topic, timeout_s=3)
        reader.assign()
        assert sorted(_read_all(reader, 30)) == list(range(30))
        catalog = ItemReader(config, topic, timeout_s=3)  # the trainer's reader of `items`
        catalog.assign()
        broker.kill()
        with caplog.at_level(logging.WARNING):
            assert reader.refresh_partitions() is False
            assert catalog.read_to_end(timeout_s=5) == []  # an event on an unknown item: training goes on
        assert "could not look for new partitions" in caplog.text
        assert "cannot find the end of the catalog" in caplog.text
        catalog.close()
        with pytest.raises(rdkafka.KafkaException):
            reader.lag()  # the caller is told, and asks again later
        broker.start()
        _produce(config, topic, 10, start=30)
        assert sorted(_read_all(reader, 10, timeout_s=120)) == list(range(30, 40)), "on from where it was, nothing twice"
        assert reader.refresh_partitions() is False and reader.lag() == {p: 0 for p in reader.positions}
        reader.close()
