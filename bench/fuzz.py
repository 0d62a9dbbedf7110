"""Fuzz the ingester's validation: every raw record becomes a normalised message or a known DLQ rejection.

``streamrec bench fuzz [--examples 100000] [--seed 0]`` feeds hypothesis-generated records (arbitrary
bytes, JSON documents with any values in any field, truncated JSON, protobuf with junk appended)
with several content types and record timestamps to ``EventValidator.event`` and ``.item``, and
prints one JSON line: examples run, records per second, outcomes by DLQ code, and the smallest
escaping record if any (exit 1 then). Anything but ``RecordRejected`` escaping is a bug: the
pipeline would route the record to the DLQ as ``internal_error`` instead of with its reason.

The record strategies live here; the unit test runs the same ones with a few hundred examples.
Needs the ``dev`` extra (hypothesis).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from hypothesis import strategies as st

from streamrec_proto.v1 import event_pb2

JSON_CT = b"application/json"
PB_CT = b"application/x-protobuf"

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=30))
_json_values = st.recursive(
    _scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12)
_field_names = st.sampled_from(["event_id", "user_id", "item_id", "type", "value", "timestamp", "timestamp_ms",
                                "context", "title", "text", "categories", "attributes", "available",
                                "updated_at_ms"])
json_docs = st.dictionaries(_field_names | st.text(max_size=6), _json_values, max_size=10)


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


def _item_proto_bytes():
    def build(fields):
        msg = event_pb2.Item()
        for k, v in fields.items():
            if k == "categories":
                msg.categories.extend(v)
            else:
                setattr(msg, k, v)
        return msg.SerializeToString()
    return st.fixed_dictionaries({}, optional={
        "item_id": st.text(max_size=10), "title": st.text(max_size=20), "text": st.text(max_size=40),
        "categories": st.lists(st.text(max_size=8), max_size=4), "available": st.booleans(),
        "updated_at_ms": st.integers(-2**63, 2**63 - 1)}).map(build)


payloads = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_docs.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    json_docs.map(lambda d: json.dumps(d).encode()).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),
    _proto_bytes(),
    _item_proto_bytes(),
    _proto_bytes().flatmap(lambda b: st.binary(max_size=8).map(lambda junk: b + junk)),
)
content_types = st.sampled_from([None, JSON_CT, PB_CT, b"text/plain", b"\xff", b"application/json;x"])
record_timestamps = st.one_of(st.none(), st.integers(-10, 2**62))


def check_record(validator, payload: bytes | None, ctype: bytes | None, record_ts: int | None, now_ms: int) -> list[str]:
    """Run one record through both parsers; -> one outcome per parser ("event", "item" or a DLQ code).

    Raises AssertionError (or whatever escaped) when the contract is broken.
    """
    from services.ingester.validation import ERROR_CODES, RecordRejected

    outcomes = []
    for kind, parse in (("event", validator.event), ("item", validator.item)):
        try:
            out = parse(payload, ctype, record_ts, now_ms)
        except RecordRejected as rej:
            assert rej.code in ERROR_CODES and rej.reason, f"unknown code or empty reason: {rej!r}"
            outcomes.append(rej.code)
            continue
        out.SerializeToString()  # the normalised message always serialises
        if kind == "event":
            assert out.event_id and out.user_id and out.item_id and out.type in validator.event_types
        else:
            assert out.item_id and out.updated_at_ms >= 0
        outcomes.append(kind)
    return outcomes


def run(examples: int, seed: int) -> dict:
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hypothesis_seed

    from services.ingester.config import IngesterSection
    from services.ingester.validation import EventValidator

    validator = EventValidator(IngesterSection())
    now_ms = int(time.time() * 1000)
    outcomes: Counter[str] = Counter()
    count = [0]

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink], verbosity=Verbosity.quiet,
              suppress_health_check=list(HealthCheck))
    @given(payload=payloads, ctype=content_types, record_ts=record_timestamps)
    def fuzz(payload, ctype, record_ts):
        count[0] += 1
        outcomes.update(check_record(validator, payload, ctype, record_ts, now_ms))

    started = time.perf_counter()
    failure = None
    try:
        fuzz()
    except Exception as exc:  # noqa: BLE001 - reported in the JSON line (hypothesis has shrunk it)
        failure = f"{type(exc).__name__}: {str(exc)[:2000]}"
    seconds = time.perf_counter() - started
    return {
        "bench": "fuzz", "target": "services.ingester.validation.EventValidator",
        "examples": count[0], "requested": examples, "seed": seed, "escapes": 0 if failure is None else 1,
        "seconds": round(seconds, 1), "records_per_s": round(2 * count[0] / seconds) if seconds else None,
        "outcomes": dict(sorted(outcomes.items())), "failure": failure,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamrec bench fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    result = run(args.examples, args.seed)
    print(json.dumps(result))
    return 0 if result["failure"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
