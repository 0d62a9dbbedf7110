"""EventValidator: formats, field checks, normalisation, and a fuzz test that nothing escapes."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingester.config import DEFAULT_EVENT_WEIGHTS, IngesterSection
from services.ingester.validation import ERROR_CODES, EventValidator, RecordRejected
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

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=30))
_json_values = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                            max_leaves=12)
_field_names = st.sampled_from(["event_id", "user_id", "item_id", "type", "value", "timestamp", "timestamp_ms", "context",
                                "title", "text", "categories", "attributes", "available", "updated_at_ms"])
_json_docs = st.dictionaries(_field_names | st.text(max_size=6), _json_values, max_size=10)


def _proto_bytes():
    def build(fields):
        msg = event_pb2.Event()
        for k, v in fields.items():
            setattr(msg, k, v)
        return msg.SerializeToString()
    return st.fixed_dictionaries({}, optional={
        "event_id": st.text(max_size=10), "user_id": st.text(max_size=10), "item_id": st.text(max_size=300),
        "type": st.sampled_from(["view", "CLICK", "", "boom"]) | st.text(max_size=5),
        "value": st.floats(allow_nan=True), "timestamp_ms": st.integers(-2**63, 2**63 - 1)}).map(build)


_payloads = st.one_of(
    st.none(),
    st.binary(max_size=200),
    _json_docs.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    _json_docs.map(lambda d: json.dumps(d).encode()).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),
    _proto_bytes(),
    _proto_bytes().flatmap(lambda b: st.binary(max_size=8).map(lambda junk: b + junk)),
)
_content_types = st.sampled_from([None, JSON_CT, PB_CT, b"text/plain", b"\xff", b"application/json;x"])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_payloads, ctype=_content_types, record_ts=st.one_of(st.none(), st.integers(-10, 2**62)))
def test_fuzz_every_record_is_a_message_or_a_known_rejection(payload, ctype, record_ts):
    v = _validator()
    for parse in (v.event, v.item):
        try:
            out = parse(payload, ctype, record_ts, NOW)
        except RecordRejected as rej:
            assert rej.code in ERROR_CODES and rej.reason
        else:
            out.SerializeToString()  # the normalised message always serialises
            if parse is v.event:
                assert out.event_id and out.user_id and out.item_id and out.type in DEFAULT_EVENT_WEIGHTS
