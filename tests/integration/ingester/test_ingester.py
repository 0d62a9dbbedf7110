"""The ingester on the real broker: routing, DLQ reasons, dedup, items, kcat interop."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from services.cli.publish import EventPublisher
from streamrec_proto.v1 import event_pb2
from tests.integration.ingester.helpers import header_map
from tests.integration.topics import read_topic
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

NOW = int(time.time() * 1000)


def _event(i: int, user: str, **extra) -> dict:
    return {"event_id": f"e{i}", "user_id": user, "item_id": f"i{i % 7}", "type": "click",
            "timestamp_ms": NOW + i, **extra}


def _events(kafka_config, running=None) -> list[event_pb2.Event]:
    return [event_pb2.Event.FromString(r.value) for r in read_topic(kafka_config, kafka_config.topics.name("events"))]


def test_valid_events_arrive_keyed_by_user_in_order_and_duplicates_are_removed(kafka_config, run_ingester):
    running = run_ingester()
    with EventPublisher(kafka_config) as pub:
        for i in range(60):
            pub.publish_event(_event(i, f"u{i % 5}"))
        # re-sent duplicates: JSON again, and as protobuf with a different encoding of the same event
        for i in range(0, 60, 6):
            pub.publish_event(_event(i, f"u{i % 5}"))
        pub.publish_event(event_pb2.Event(event_id="e1", user_id="u1", item_id="i1", type="CLICK", timestamp_ms=NOW + 1))
    running.wait_committed(71)

    records = read_topic(kafka_config, kafka_config.topics.name("events"))
    assert len(records) == 60
    for rec in records:
        ev = event_pb2.Event.FromString(rec.value)
        assert rec.key == ev.user_id.encode()
        assert header_map(rec)["content-type"] == b"application/x-protobuf"
    by_partition: dict = {}
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        ev = event_pb2.Event.FromString(rec.value)
        by_partition.setdefault((rec.partition, ev.user_id), []).append(ev.timestamp_ms)
    assert all(ts == sorted(ts) for ts in by_partition.values()), "each user's events keep their order"
    assert len({p for p, _ in by_partition}) >= 1 and len({u for _, u in by_partition}) == 5
    assert running.metric("streamrec_ingester_dedup_hits_total") == 11
    assert running.metric("streamrec_ingester_records_out_total", {"topic": kafka_config.topics.name("events")}) == 60
    assert running.metric("streamrec_ingester_records_in_total", {"topic": kafka_config.topics.name("events_raw")}) == 71
    assert running.metric("streamrec_ingester_last_event_timestamp_seconds") == pytest.approx((NOW + 59) / 1000)


def _committed_at_the_broker(kafka_config, group_id: str) -> int:
    from kafka import TopicPartition

    from services.common.kafka import make_consumer

    topic = kafka_config.topics.name("events_raw")
    reader = make_consumer(kafka_config, None, group_id)  # reads the group's offsets without joining it
    try:
        return sum(reader.committed(TopicPartition(topic, p)) or 0 for p in range(kafka_config.topics.partitions))
    finally:
        reader.close(autocommit=False)


def test_every_processed_record_is_committed_at_the_broker_while_the_stream_is_quiet(kafka_config, run_ingester):
    # The commits are sent without waiting for their answers; the last one must still land (and be sent
    # again if it failed) when no further batch comes to carry it.
    running = run_ingester()
    group = running.config.ingester.group_id
    with EventPublisher(kafka_config) as pub:
        for burst, total in ((range(0, 30), 30), (range(30, 50), 50)):
            for i in burst:
                pub.publish_event(_event(i, f"u{i % 4}"))
            pub.flush()
            wait_for(lambda: _committed_at_the_broker(kafka_config, group) == total, 60,
                     f"the group's committed offsets to reach {total}")
    running.wait_committed(50)
    running.stop()
    assert _committed_at_the_broker(kafka_config, group) == 50


BAD = [
    (b"{oops", {"content-type": b"application/json"}, "invalid_json"),
    (b"\x0a\xff\xff\xff", {"content-type": b"application/x-protobuf"}, "invalid_protobuf"),
    (b'{"user_id": "u", "item_id": "i", "type": "view"}', {}, "missing_field"),
    (b'{"event_id": "x1", "user_id": "u", "item_id": "i", "type": "teleport"}', {}, "unknown_event_type"),
    (json.dumps({"event_id": "x2", "user_id": "u", "item_id": "i", "type": "view",
                 "timestamp_ms": NOW + 86_400_000}).encode(), {}, "timestamp_in_future"),
    (b'{"event_id": "x3", "user_id": "u", "item_id": "i", "type": "view", "timestamp_ms": 1000}', {}, "timestamp_too_old"),
    (json.dumps({"event_id": "x4", "user_id": "u", "item_id": "i", "type": "view", "context": {"p": "x" * 70_000}}).encode(),
     {}, "oversize"),
    (b'{"event_id": "x5", "user_id": ["u"], "item_id": "i", "type": "view"}', {"trace": b"abc"}, "invalid_field"),
    (b'{"event_id": "x6", "user_id": "u", "item_id": "i", "type": "view"}', {"content-type": b"text/csv"},
     "unsupported_content_type"),
]


def test_every_kind_of_bad_record_lands_on_the_dlq_unchanged_with_its_reason(kafka_config, run_ingester, raw_producer):
    running = run_ingester()
    raw = kafka_config.topics.name("events_raw")
    sent = {}
    for n, (value, headers, code) in enumerate(BAD):
        meta = raw_producer.send(raw, key=f"k{n}".encode(), value=value, headers=list(headers.items())).get(10)
        sent[f"k{n}".encode()] = (value, headers, code, meta)
    raw_producer.send(raw, key=b"good", value=json.dumps(_event(1, "u1")).encode()).get(10)
    running.wait_committed(len(BAD) + 1)

    dlq = read_topic(kafka_config, kafka_config.topics.name("dlq"))
    assert len(dlq) == len(BAD), "every bad record, and only those, reaches the DLQ"
    for rec in dlq:
        value, headers, code, meta = sent[rec.key]
        h = header_map(rec)
        assert rec.value == value, "value unchanged"
        assert {k: h[k] for k in headers} == headers, "original headers kept"
        assert h["streamrec.error.code"].decode() == code
        assert h["streamrec.error.reason"]
        assert h["streamrec.source.topic"] == raw.encode()
        assert (int(h["streamrec.source.partition"]), int(h["streamrec.source.offset"])) == (meta.partition, meta.offset)
        assert running.metric("streamrec_ingester_rejected_total", {"code": code}) >= 1
    assert [e.event_id for e in _events(kafka_config)] == ["e1"]


def test_items_are_upserted_to_the_compacted_topic_keyed_by_item(kafka_config, run_ingester):
    running = run_ingester()
    with EventPublisher(kafka_config) as pub:
        pub.publish_item({"item_id": "i1", "title": "Red shoe", "categories": ["shoes"], "attributes": {"size": 42}})
        pub.publish_item(event_pb2.Item(item_id="i2", title="Blue hat", available=False))
        pub.publish_item({"title": "no id"})
    running.wait_committed(3)
    items = read_topic(kafka_config, kafka_config.topics.name("items"))
    got = {r.key: event_pb2.Item.FromString(r.value) for r in items}
    assert set(got) == {b"i1", b"i2"}
    assert dict(got[b"i1"].attributes) == {"size": "42"} and got[b"i1"].updated_at_ms > 0
    assert got[b"i2"].HasField("available") and not got[b"i2"].available
    dlq = read_topic(kafka_config, kafka_config.topics.name("dlq"))
    assert [header_map(r)["streamrec.error.code"] for r in dlq] == [b"missing_field"]


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_a_record_published_with_kcat_is_ingested_like_one_from_kafka_python(kafka_config, run_ingester, raw_producer):
    from services.common.kafka import ensure_topics

    raw = kafka_config.topics.name("events_raw")
    ensure_topics(kafka_config, [raw])
    doc = {"user_id": "u-kcat", "item_id": "i1", "type": "Purchase", "value": 2, "timestamp_ms": NOW, "context": {"src": "cli"}}
    lines = [json.dumps(doc | {"event_id": "via-kcat-header"}), json.dumps(doc | {"event_id": "via-kcat-sniffed"})]
    for line, extra in zip(lines, (["-H", "content-type=application/json"], [])):
        subprocess.run(["kcat", "-P", "-b", kafka_config.bootstrap_servers, "-t", raw, "-k", "u-kcat", *extra],
                       input=line.encode(), check=True, timeout=30)
    raw_producer.send(raw, key=b"u-kcat", value=json.dumps(doc | {"event_id": "via-python"}).encode(),
                      headers=[("content-type", b"application/json")]).get(10)
    running = run_ingester()
    running.wait_committed(3)
    records = read_topic(kafka_config, kafka_config.topics.name("events"))
    events = {event_pb2.Event.FromString(r.value).event_id: (r.key, event_pb2.Event.FromString(r.value)) for r in records}
    assert set(events) == {"via-kcat-header", "via-kcat-sniffed", "via-python"}
    key, reference = events["via-python"]
    assert reference.type == "purchase" and reference.value == 2.0
    for name in ("via-kcat-header", "via-kcat-sniffed"):
        k, ev = events[name]
        ev.event_id = reference.event_id
        assert (k, ev) == (key, reference)


def test_a_replay_from_scratch_is_fully_deduplicated_by_the_rebuilt_window(kafka_config, run_ingester):
    """A restarted ingester rebuilds its window from `events`: re-reading all input adds nothing."""
    first = run_ingester()
    with EventPublisher(kafka_config) as pub:
        for i in range(200):
            pub.publish_event(_event(i, f"u{i % 9}"))
    first.wait_committed(200)
    first.stop()
    # A new group starts from the earliest offset: the worst replay there is.
    replay = run_ingester(group_id=kafka_config.topics.prefix + "replay")
    replay.wait_committed(200)
    assert replay.metric("streamrec_ingester_dedup_hits_total") == 200
    assert len(read_topic(kafka_config, kafka_config.topics.name("events"))) == 200
