"""Decode, validate and normalise raw events and items.

``EventValidator.event`` / ``.item`` turn one raw record value into a normalised protobuf message
or raise ``RecordRejected`` with a DLQ error code and a human reason. Anything else escaping is a
bug; the pipeline still routes such a record to the DLQ as ``internal_error`` (the fuzz tests check
that it never happens).

Formats: the ``content-type`` header says JSON or protobuf; without one the record is JSON if it
parses as a JSON object, else protobuf. A value starting with ``{`` or ``[`` that is not a JSON
object is reported as ``invalid_json``: a protobuf Event/Item never starts with byte 0x7B or 0x5B
(start-group tags for fields 15 and 11, which neither message has).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from google.protobuf.message import DecodeError

from services.ingester.config import IngesterSection
from streamrec_proto.v1 import event_pb2

try:  # several times faster than json on the hot path; optional
    import orjson as _orjson

    _loads = _orjson.loads
    _JSONError: tuple[type[Exception], ...] = (_orjson.JSONDecodeError, UnicodeDecodeError)
except ImportError:  # pragma: no cover - exercised where orjson is absent
    import json as _json

    _loads = _json.loads
    _JSONError = (ValueError, UnicodeDecodeError, RecursionError)

# DLQ error codes (the `streamrec.error.code` header).
EMPTY_RECORD = "empty_record"
INVALID_JSON = "invalid_json"
INVALID_PROTOBUF = "invalid_protobuf"
UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
MISSING_FIELD = "missing_field"
INVALID_FIELD = "invalid_field"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
TIMESTAMP_TOO_OLD = "timestamp_too_old"
OVERSIZE = "oversize"
INTERNAL_ERROR = "internal_error"
ERROR_CODES = (
    EMPTY_RECORD, INVALID_JSON, INVALID_PROTOBUF, UNSUPPORTED_CONTENT_TYPE, MISSING_FIELD, INVALID_FIELD,
    UNKNOWN_EVENT_TYPE, TIMESTAMP_IN_FUTURE, TIMESTAMP_TOO_OLD, OVERSIZE, INTERNAL_ERROR,
)

JSON_TYPES = frozenset({"application/json", "text/json"})
PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf"})

_WS = b" \t\r\n"
_INT64_MAX = 2**63 - 1


class RecordRejected(Exception):
    """A record that goes to the DLQ with ``code`` and ``reason``."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def _content_kind(content_type: bytes | None) -> str | None:
    """'json', 'protobuf' or None (no header: sniff); raises for an unknown type."""
    if content_type is None:
        return None
    try:
        mime = content_type.decode("latin-1").split(";", 1)[0].strip().lower()
    except Exception:  # noqa: BLE001 - header bytes are untrusted
        mime = ""
    if mime in JSON_TYPES or (mime.startswith("application/") and mime.endswith("+json")):
        return "json"
    if mime in PROTOBUF_TYPES:
        return "protobuf"
    if not mime:
        return None
    raise RecordRejected(UNSUPPORTED_CONTENT_TYPE, f"content-type {mime[:80]!r} is neither JSON nor protobuf")


def _timestamp_ms(raw: object, field: str) -> int:
    """JSON `timestamp_ms` (ms) or `timestamp` (s, ms, us or ns by magnitude, or an ISO-8601 string)."""
    if isinstance(raw, bool) or raw is None:
        raise RecordRejected(INVALID_FIELD, f"{field} must be a number")
    if isinstance(raw, str):
        text = raw.strip()
        try:
            raw = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise RecordRejected(INVALID_FIELD, f"{field} {text[:40]!r} is not a number or ISO-8601 time") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return int(parsed.timestamp() * 1000)
    if not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise RecordRejected(INVALID_FIELD, f"{field} must be a finite number")
    if field == "timestamp_ms":
        return int(raw)
    mag = abs(raw)
    if mag < 1e11:  # seconds (until year 5138)
        return int(raw * 1000)
    if mag < 1e14:
        return int(raw)
    if mag < 1e17:
        return int(raw // 1000)
    return int(raw // 1_000_000)


class EventValidator:
    """Validates and normalises events and items against an ``IngesterSection``."""

    def __init__(self, section: IngesterSection) -> None:
        self.section = section
        self.event_types = frozenset(section.event_weights)
        self.max_bytes = section.max_record_bytes
        self.max_id = section.max_id_length
        self.max_context = section.max_context_entries
        self.max_text = section.max_text_length
        self.max_future_ms = int(section.max_future_s * 1000)
        self.max_age_ms = None if section.max_age_s is None else int(section.max_age_s * 1000)
        self.min_ts = section.min_timestamp_ms

    # -- decoding ---------------------------------------------------------------------------------

    def _decode(self, value: bytes | None, content_type: bytes | None, message_cls):
        """-> dict (JSON) or a parsed protobuf message."""
        if not value:
            raise RecordRejected(EMPTY_RECORD, "record has no value")
        if len(value) > self.max_bytes:
            raise RecordRejected(OVERSIZE, f"record is {len(value)} bytes, limit {self.max_bytes}")
        kind = _content_kind(content_type)
        if kind is None:
            kind = "json" if value.lstrip(_WS)[:1] in (b"{", b"[") else "protobuf"
        if kind == "json":
            try:
                doc = _loads(value)
            except _JSONError as exc:
                raise RecordRejected(INVALID_JSON, f"not valid UTF-8 JSON: {str(exc)[:120]}") from None
            if not isinstance(doc, dict):
                raise RecordRejected(INVALID_JSON, f"JSON value is a {type(doc).__name__}, not an object")
            return doc
        try:
            return message_cls.FromString(value)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise RecordRejected(INVALID_PROTOBUF, f"not a valid {message_cls.DESCRIPTOR.name}: {str(exc)[:120]}") from None

    # -- field checks -----------------------------------------------------------------------------

    def _id(self, raw: object, field: str) -> str:
        if raw is None:
            raise RecordRejected(MISSING_FIELD, f"{field} is missing")
        if isinstance(raw, str):
            text = raw.strip()
        elif isinstance(raw, int) and not isinstance(raw, bool):
            text = str(raw)
        else:
            raise RecordRejected(INVALID_FIELD, f"{field} must be a string or an integer, got {type(raw).__name__}")
        if not text:
            raise RecordRejected(MISSING_FIELD, f"{field} is empty")
        if len(text) > self.max_id:
            raise RecordRejected(INVALID_FIELD, f"{field} is {len(text)} characters, limit {self.max_id}")
        return text

    def _map(self, raw: object, field: str) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise RecordRejected(INVALID_FIELD, f"{field} must be an object of strings")
        if len(raw) > self.max_context:
            raise RecordRejected(INVALID_FIELD, f"{field} has {len(raw)} entries, limit {self.max_context}")
        out = {}
        for key, val in raw.items():
            if isinstance(val, str):
                pass
            elif isinstance(val, bool):
                val = "true" if val else "false"
            elif isinstance(val, (int, float)) and not (isinstance(val, float) and not math.isfinite(val)):
                val = str(val)
            else:
                raise RecordRejected(INVALID_FIELD, f"{field}[{str(key)[:40]!r}] must be a string, number or bool")
            if len(key) > self.max_id or len(val) > self.max_text:
                raise RecordRejected(INVALID_FIELD, f"{field}[{str(key)[:40]!r}] is too long")
            out[key] = val
        return out

    def _check_map(self, mapping, field: str) -> None:
        if len(mapping) > self.max_context:
            raise RecordRejected(INVALID_FIELD, f"{field} has {len(mapping)} entries, limit {self.max_context}")
        for key, val in mapping.items():
            if len(key) > self.max_id or len(val) > self.max_text:
                raise RecordRejected(INVALID_FIELD, f"{field}[{key[:40]!r}] is too long")

    def _text(self, raw: object, field: str) -> str:
        if raw is None:
            return ""
        if not isinstance(raw, str):
            raise RecordRejected(INVALID_FIELD, f"{field} must be a string")
        if len(raw) > self.max_text:
            raise RecordRejected(INVALID_FIELD, f"{field} is {len(raw)} characters, limit {self.max_text}")
        return raw

    def _check_time(self, ts: int, now_ms: int) -> None:
        if ts > now_ms + self.max_future_ms:
            raise RecordRejected(TIMESTAMP_IN_FUTURE, f"timestamp_ms {ts} is {(ts - now_ms) / 1000:.0f}s ahead of now")
        if ts < self.min_ts:
            raise RecordRejected(TIMESTAMP_TOO_OLD, f"timestamp_ms {ts} is before {self.min_ts} (seconds sent as ms?)")
        if self.max_age_ms is not None and ts < now_ms - self.max_age_ms:
            raise RecordRejected(TIMESTAMP_TOO_OLD, f"timestamp_ms {ts} is {(now_ms - ts) / 1000:.0f}s old, limit {self.max_age_ms / 1000:.0f}s")

    def _item_time(self, ts: int | None, record_ts_ms: int | None, now_ms: int) -> int:
        """``updated_at_ms`` as given, else the record's time, else now; it must fit a non-negative int64."""
        if ts is None:
            return int(record_ts_ms) if record_ts_ms is not None and record_ts_ms > 0 else int(now_ms)
        if not 0 <= ts <= _INT64_MAX:
            raise RecordRejected(INVALID_FIELD, f"updated_at_ms {str(ts)[:40]} is out of range (0 to {_INT64_MAX})")
        return ts

    def _type(self, raw: object) -> str:
        if raw is None:
            raise RecordRejected(MISSING_FIELD, "type is missing")
        if not isinstance(raw, str):
            raise RecordRejected(INVALID_FIELD, "type must be a string")
        kind = raw.strip().lower()
        if not kind:
            raise RecordRejected(MISSING_FIELD, "type is empty")
        if kind not in self.event_types:
            raise RecordRejected(UNKNOWN_EVENT_TYPE, f"event type {kind[:40]!r} is not one of {sorted(self.event_types)}")
        return kind

    def _record_time(self, record_ts_ms: int | None) -> int:
        if self.section.timestamp_from_record and record_ts_ms is not None and record_ts_ms > 0:
            return int(record_ts_ms)
        raise RecordRejected(MISSING_FIELD, "timestamp_ms is missing")

    # -- records ----------------------------------------------------------------------------------

    def event(self, value: bytes | None, content_type: bytes | None, record_ts_ms: int | None, now_ms: int) -> event_pb2.Event:
        """A normalised Event, or RecordRejected."""
        doc = self._decode(value, content_type, event_pb2.Event)
        if isinstance(doc, dict):
            event_id = self._id(doc.get("event_id"), "event_id")
            user_id = self._id(doc.get("user_id"), "user_id")
            item_id = self._id(doc.get("item_id"), "item_id")
            kind = self._type(doc.get("type"))
            raw_value = doc.get("value")
            if raw_value is None:
                val = 0.0
            elif isinstance(raw_value, (int, float)) and not isinstance(raw_value, bool):
                val = float(raw_value)
                if not math.isfinite(val):
                    raise RecordRejected(INVALID_FIELD, "value must be finite")
            else:
                raise RecordRejected(INVALID_FIELD, "value must be a number")
            if doc.get("timestamp_ms") is not None:
                ts = _timestamp_ms(doc["timestamp_ms"], "timestamp_ms")
            elif doc.get("timestamp") is not None:
                ts = _timestamp_ms(doc["timestamp"], "timestamp")
            else:
                ts = self._record_time(record_ts_ms)
            self._check_time(ts, now_ms)
            context = self._map(doc.get("context"), "context")
            return event_pb2.Event(event_id=event_id, user_id=user_id, item_id=item_id, type=kind,
                                   value=val, timestamp_ms=ts, context=context)
        msg = doc
        event_id = self._id(msg.event_id, "event_id")
        user_id = self._id(msg.user_id, "user_id")
        item_id = self._id(msg.item_id, "item_id")
        kind = self._type(msg.type)
        if not math.isfinite(msg.value):
            raise RecordRejected(INVALID_FIELD, "value must be finite")
        ts = msg.timestamp_ms or self._record_time(record_ts_ms)
        self._check_time(ts, now_ms)
        self._check_map(msg.context, "context")
        return event_pb2.Event(event_id=event_id, user_id=user_id, item_id=item_id, type=kind,
                               value=msg.value, timestamp_ms=ts, context=dict(msg.context))

    def item(self, value: bytes | None, content_type: bytes | None, record_ts_ms: int | None, now_ms: int) -> event_pb2.Item:
        """A normalised Item, or RecordRejected."""
        doc = self._decode(value, content_type, event_pb2.Item)
        if isinstance(doc, dict):
            item_id = self._id(doc.get("item_id"), "item_id")
            title = self._text(doc.get("title"), "title")
            text = self._text(doc.get("text"), "text")
            raw_cats = doc.get("categories")
            if raw_cats is None:
                cats: list[str] = []
            elif isinstance(raw_cats, str):
                cats = [c.strip() for c in raw_cats.split("|") if c.strip()]
            elif isinstance(raw_cats, list) and all(isinstance(c, str) for c in raw_cats):
                cats = [c.strip() for c in raw_cats if c.strip()]
            else:
                raise RecordRejected(INVALID_FIELD, "categories must be a list of strings")
            if len(cats) > self.max_context or any(len(c) > self.max_id for c in cats):
                raise RecordRejected(INVALID_FIELD, "too many or too long categories")
            attributes = self._map(doc.get("attributes"), "attributes")
            available = doc.get("available")
            if available is not None and not isinstance(available, bool):
                raise RecordRejected(INVALID_FIELD, "available must be true or false")
            raw_ts = doc.get("updated_at_ms")
            ts = self._item_time(_timestamp_ms(raw_ts, "timestamp_ms") if raw_ts is not None else None,
                                 record_ts_ms, now_ms)
            item = event_pb2.Item(item_id=item_id, title=title, text=text, categories=cats,
                                  attributes=attributes, updated_at_ms=ts)
            if available is not None:
                item.available = available
            return item
        msg = doc
        item_id = self._id(msg.item_id, "item_id")
        self._text(msg.title, "title")
        self._text(msg.text, "text")
        if len(msg.categories) > self.max_context or any(len(c) > self.max_id for c in msg.categories):
            raise RecordRejected(INVALID_FIELD, "too many or too long categories")
        self._check_map(msg.attributes, "attributes")
        item = event_pb2.Item(item_id=item_id, title=msg.title, text=msg.text,
                              categories=[c.strip() for c in msg.categories if c.strip()],
                              attributes=dict(msg.attributes),
                              updated_at_ms=self._item_time(msg.updated_at_ms or None, record_ts_ms, now_ms))
        if msg.HasField("available"):
            item.available = msg.available
        return item
