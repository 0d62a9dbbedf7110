"""EventValidator: formats, field checks, normalisation, and a fuzz test that nothing escapes."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings

from bench.fuzz import check_record, content_types, payloads, record_timestamps
from services.ingester.config import IngesterSection
from services.ingester.validation import EventValidator, RecordRejected
from streamrec_proto.v1 import event_pb2

NOW = int(time.time() * 1000)
JSON_CT = b"application/json"
PB_CT = b"application/x-protobuf"


def _validator(**kw) -> EventValidator:
    return EventValidator(IngesterSection(**kw))


def _event(**fields) -> bytes:
    doc = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "timestamp_ms": NOW} | fields
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def _code(fn, *args) -> str:
    with pytest.raises(RecordRejected) as info:
        fn(*args)
    return info.value.code


def test_json_event_is_normalised():
    v = _validator()
    raw = _event(event_id=42, user_id=" u7 ", type=" Purchase ", value=3, context={"page": "home", "pos": 2, "ab": True},
                 timestamp_ms=..., timestamp=NOW // 1000)
    ev = v.event(raw, JSON_CT, None, NOW)
    assert (ev.event_id, ev.user_id, ev.type, ev.value) == ("42", "u7", "purchase", 3.0)
    assert ev.timestamp_ms == NOW // 1000 * 1000
    assert dict(ev.context) == {"page": "home", "pos": "2", "ab": "true"}


@pytest.mark.parametrize("stamp, expected", [
    (1_700_000_000, 1_700_000_000_000),            # seconds
    (1_700_000_000.5, 1_700_000_000_500),          # fractional seconds
    (1_700_000_000_123, 1_700_000_000_123),        # ms
    (1_700_000_000_123_456, 1_700_000_000_123),    # us
    ("2023-11-14T22:13:20Z", 1_700_000_000_000),   # ISO-8601
    ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
])
def test_timestamp_units_become_ms(stamp, expected):
    ev = _validator().event(_event(timestamp_ms=..., timestamp=stamp), None, None, NOW)
    assert ev.timestamp_ms == expected


def test_protobuf_event_with_and_without_header_gives_the_same_result():
    v = _validator()
    msg = event_pb2.Event(event_id="e1", user_id="u1", item_id="i1", type="VIEW", timestamp_ms=NOW, context={"a": "b"})
    raw = msg.SerializeToString()
    a = v.event(raw, PB_CT, None, NOW)
    b = v.event(raw, None, None, NOW)  # sniffed: not a JSON object
    assert a == b and a.type == "view"
    assert v.event(_event(type="view", context={"a": "b"}), None, None, NOW) == a


def test_missing_timestamp_takes_the_record_time_or_is_rejected():
    raw = _event(timestamp_ms=...)
    assert _validator().event(raw, None, NOW - 5, NOW).timestamp_ms == NOW - 5
    assert _code(_validator(timestamp_from_record=False).event, raw, None, NOW, NOW) == "missing_field"


@pytest.mark.parametrize("raw, code", [
    (None, "empty_record"),
    (b"", "empty_record"),
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b"\xff\xfe{", "invalid_protobuf"),
    (_event(event_id=...), "missing_field"),
    (_event(user_id=""), "missing_field"),
    (_event(item_id=None), "missing_field"),
    (_event(type=...), "missing_field"),
    (_event(user_id=1.5), "invalid_field"),
    (_event(user_id=True), "invalid_field"),
    (_event(user_id="x" * 300), "invalid_field"),
    (_event(value="3"), "invalid_field"),
    (_event(context=[1]), "invalid_field"),
    (_event(context={"a": {"b": 1}}), "invalid_field"),
    (_event(type="teleport"), "unknown_event_type"),
    (_event(type=7), "invalid_field"),
    (_event(timestamp_ms=NOW + 3_600_000), "timestamp_in_future"),
    (_event(timestamp_ms=1_700_000), "timestamp_too_old"),
    (_event(timestamp_ms="yesterday"), "invalid_field"),
    (_event(context={"pad": "x" * 70_000}), "oversize"),
])
def test_bad_events_are_rejected_with_a_code(raw, code):
    assert _code(_validator().event, raw, None, None, NOW) == code


def test_json_header_on_protobuf_bytes_is_invalid_json_and_vice_versa():
    v = _validator()
    pb = event_pb2.Event(event_id="e", user_id="u", item_id="i", type="view", timestamp_ms=NOW).SerializeToString()
    assert _code(v.event, pb, JSON_CT, None, NOW) == "invalid_json"
    assert _code(v.event, _event(), b"text/plain", None, NOW) == "unsupported_content_type"
    assert v.event(_event(), b"application/json; charset=utf-8", None, NOW).event_id == "e1"


def test_max_age_and_configured_event_types():
    v = _validator(max_age_s=3600, event_weights={"Play": 1.0, "skip": -0.5})
    assert v.event(_event(type="PLAY"), None, None, NOW).type == "play"
    assert _code(v.event, _event(type="click"), None, None, NOW) == "unknown_event_type"
    assert _code(v.event, _event(type="play", timestamp_ms=NOW - 7_200_000), None, None, NOW) == "timestamp_too_old"


def test_items_json_and_protobuf():
    v = _validator()
    item = v.item(json.dumps({"item_id": 9, "title": "T", "categories": "a| b", "attributes": {"price": 3.5},
                              "available": False}).encode(), None, NOW, NOW)
    assert (item.item_id, list(item.categories), dict(item.attributes), item.available) == ("9", ["a", "b"], {"price": "3.5"}, False)
    assert item.updated_at_ms == NOW
    pb = event_pb2.Item(item_id="x", title="t").SerializeToString()
    out = v.item(pb, PB_CT, NOW, NOW)
    assert out.item_id == "x" and not out.HasField("available")
    assert _code(v.item, b'{"title": "no id"}', None, NOW, NOW) == "missing_field"
    assert _code(v.item, b'{"item_id": "x", "available": "yes"}', None, NOW, NOW) == "invalid_field"
    assert _code(v.item, b'{"item_id": "x", "categories": [1]}', None, NOW, NOW) == "invalid_field"


# -- fuzz: nothing but RecordRejected escapes, every record is either a message or a known code ----

@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads, ctype=content_types, record_ts=record_timestamps)
def test_fuzz_every_record_is_a_message_or_a_known_rejection(payload, ctype, record_ts):
    # `streamrec bench fuzz` runs the same strategies with 10^5 examples.
    check_record(_validator(), payload, ctype, record_ts, NOW)


@pytest.mark.parametrize("stamp", [2**70, -(2**70), 2**63, -1])
def test_an_item_time_outside_int64_or_negative_is_rejected_with_a_reason(stamp):
    v = _validator()
    with pytest.raises(RecordRejected) as info:
        v.item(json.dumps({"item_id": "x", "updated_at_ms": stamp}).encode(), None, NOW, NOW)
    assert info.value.code == "invalid_field" and "updated_at_ms" in info.value.reason
    pb = event_pb2.Item(item_id="x", updated_at_ms=-5).SerializeToString()
    assert _code(v.item, pb, PB_CT, NOW, NOW) == "invalid_field"
    # Without a time of its own an item takes the record's, or now when the record has none.
    assert v.item(b'{"item_id": "x"}', None, -1, NOW).updated_at_ms == NOW
    assert v.item(b'{"item_id": "x"}', None, NOW - 5, NOW).updated_at_ms == NOW - 5
