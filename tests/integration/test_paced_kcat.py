"""The benches' background publisher: kcat fed at a set rate, on the real broker."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from bench.kcat import PacedKcat
from recmodel.data import Event, SyntheticStream
from services.common.kafka import ensure_topics, make_consumer

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")]


def _read_all(config, topic: str, want: int, timeout_s: float = 120.0) -> list:
    consumer = make_consumer(config, [topic], None)
    got = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            for records in consumer.poll(500).values():
                got.extend(records)
    finally:
        consumer.close()
    return got


def test_every_event_arrives_once_as_the_demo_json_keyed_by_its_user(kafka_config):
    topic = kafka_config.topics.name("events_raw")
    ensure_topics(kafka_config, [topic])
    events = list(SyntheticStream(seed=3, n_users=20, n_items=40, n_events=600).events())
    publisher = PacedKcat(kafka_config.bootstrap_servers, topic, iter(events), rate=2000).start()
    try:
        assert publisher.done.wait(120), "the publisher did not reach the end of its events"
    finally:
        publisher.close()  # waits for kcat to deliver
    assert publisher.sent == len(events)
    records = _read_all(kafka_config, topic, len(events))
    assert len(records) == len(events)
    by_id = {e.event_id: e for e in events}
    for rec in records:
        doc = json.loads(rec.value)
        event = by_id.pop(doc["event_id"])
        assert rec.key == event.user_id.encode()
        assert (doc["user_id"], doc["item_id"], doc["type"], doc["value"]) == \
            (event.user_id, event.item_id, event.type, event.value)
        assert abs(doc["timestamp_ms"] - time.time() * 1000) < 600_000  # written now, not the stream's time
        assert dict(rec.headers)["content-type"] == b"application/json"
    assert not by_id


def test_a_user_id_that_would_break_kcats_line_format_stops_the_publisher_with_the_reason(kafka_config):
    topic = kafka_config.topics.name("events_raw")
    ensure_topics(kafka_config, [topic])
    good = Event(event_id="e0", user_id="u0", item_id="i1", type="click", value=1.0, timestamp_ms=0)
    bad = Event(event_id="e1", user_id="u\t1", item_id="i1", type="click", value=1.0, timestamp_ms=0)
    publisher = PacedKcat(kafka_config.bootstrap_servers, topic, iter([good, bad, good]), rate=1000).start()
    try:
        assert publisher.done.wait(60)
    finally:
        publisher.close()
    assert isinstance(publisher.error, ValueError) and "tab or a newline" in str(publisher.error)
    assert publisher.sent <= 1  # the slice holding the bad event was not written
