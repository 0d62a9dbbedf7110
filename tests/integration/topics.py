"""Reading what is on a topic, for integration tests' assertions."""

from __future__ import annotations

import time

from services.common.kafka import make_consumer, partitions_for


def read_topic(kafka_config, topic: str, timeout_s: float = 30.0) -> list:
    """Every record now in ``topic`` (all partitions, from the beginning to the end offsets of this moment)."""
    consumer = make_consumer(kafka_config, None, None, max_poll_records=5000)
    try:
        parts = partitions_for(consumer, topic)
        consumer.assign(parts)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(parts)
        out = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, f"reading {topic} took over {timeout_s:.0f} s"
            for records in consumer.poll(200).values():
                out.extend(records)
        return out
    finally:
        consumer.close(autocommit=False)
