"""``streamrec publish``: send events or items from a JSONL/CSV file or stdin to Kafka.

    streamrec publish events.jsonl                     # JSONL events -> events.raw
    streamrec publish --kind items catalog.csv         # CSV items   -> items.raw
    cat events.jsonl | streamrec publish -             # stdin

and from Python, without any other tool::

    from services.cli.publish import EventPublisher
    with EventPublisher("127.0.0.1:9092") as pub:
        sent = pub.publish_event({"event_id": "e1", "user_id": "u1", "item_id": "i9", "type": "click",
                                  "timestamp_ms": 1700000000000})
        sent.result(timeout=10)  # optional: wait until Kafka has it (close() waits for every record)

Records go out through librdkafka (services/common/rdkafka.py), acks=all and idempotent; each publish
returns a ``concurrent.futures.Future`` that resolves once Kafka acknowledged the record (``.get(timeout)``
works too). Producer settings are librdkafka's (``EventPublisher(kafka, **{"linger.ms": 20})``) or the
same names with underscores (``linger_ms=20``); a name librdkafka does not know raises ValueError naming it.

Events are keyed by user_id (a user's events stay in order, and a re-sent duplicate lands in the
same partition as its original) and items by item_id. Dicts go as JSON, protobuf messages as
protobuf, each with its ``content-type`` header. The ingester validates; this client only encodes.
CSV columns: the JSON field names; ``context.<key>`` / ``attributes.<key>`` columns fill those maps;
``categories`` is ``|``-separated; empty cells are left out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from pydantic import ConfigDict

from services.common.config import KafkaConfig, ServiceConfig, load_config
from services.common.errors import ConfigError
from services.common.kafka import CONTENT_TYPE_HEADER, JSON, PROTOBUF, ensure_topics
from services.common.rdkafka import Delivery, Producer
from services.common.tls import DEFAULT_LOCAL_DIR, TLS_DIR_ENV, cli_tls
from services.stack.stack import StackPorts

JSON_HEADERS = [(CONTENT_TYPE_HEADER, JSON.encode())]
PROTOBUF_HEADERS = [(CONTENT_TYPE_HEADER, PROTOBUF.encode())]


def _as_dict(obj: Any) -> dict:
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "to_dict"):  # recmodel.data.Event / Item
        return obj.to_dict()
    raise TypeError(f"cannot publish a {type(obj).__name__}: pass a dict, a protobuf message or an object with to_dict()")


class EventPublisher:
    """Publishes events to ``events.raw`` and items to ``items.raw`` (acks=all, idempotent).

    ``kafka``: a KafkaConfig, or just the bootstrap servers. ``producer_options``: librdkafka settings (see the
    module docstring). Each publish returns a :class:`~services.common.rdkafka.Delivery`, resolved on the
    producer's own thread when Kafka answers; ``flush`` waits for every record, ``close`` too.
    """

    def __init__(self, kafka: KafkaConfig | str | None = None, *, create_topics: bool = True, **producer_options) -> None:
        if kafka is None or isinstance(kafka, str):
            kafka = KafkaConfig(**({"bootstrap_servers": kafka} if kafka else {}))
        self.config = kafka
        self.events_topic = kafka.topics.name("events_raw")
        self.items_topic = kafka.topics.name("items_raw")
        if create_topics and kafka.topics.create:
            ensure_topics(kafka, [self.events_topic, self.items_topic])
        self.producer = Producer(kafka, futures=True, **producer_options)
        self.sent = 0

    def _send(self, topic: str, key_field: str, record: Any) -> Delivery:
        if hasattr(record, "SerializeToString"):
            key = getattr(record, key_field, "")
            value, headers = record.SerializeToString(), PROTOBUF_HEADERS
        else:
            doc = _as_dict(record)
            key = doc.get(key_field)
            value, headers = json.dumps(doc, separators=(",", ":"), default=str).encode(), JSON_HEADERS
        if key not in (None, ""):
            key_bytes = str(key).encode()
        else:
            # items.raw is compacted and the broker refuses keyless records there; an empty key lets
            # the ingester see the record and send it to the DLQ with its reason.
            key_bytes = b"" if topic == self.items_topic else None
        self.sent += 1
        return self.producer.send(topic, key=key_bytes, value=value, headers=headers)

    def publish_event(self, event: Any) -> Delivery:
        """Send one event (dict, recmodel Event or streamrec.v1.Event); -> its Delivery (a Future)."""
        return self._send(self.events_topic, "user_id", event)

    def publish_item(self, item: Any) -> Delivery:
        """Send one item upsert (dict, recmodel Item or streamrec.v1.Item); -> its Delivery (a Future)."""
        return self._send(self.items_topic, "item_id", item)

    def flush(self, timeout: float | None = None) -> int:
        """Wait until Kafka acknowledged every record sent (at most ``timeout``); -> records still unanswered."""
        return self.producer.flush(timeout)

    def take_failures(self) -> list[str]:
        """The records that failed for good since the last call, one line each (topic[partition]: error)."""
        return self.producer.take_failures()

    def close(self, timeout: float | None = None) -> None:
        """Flush (without a bound by default), then stop the producer: records still unanswered after ``timeout``
        fail."""
        self.producer.close(timeout)

    def __enter__(self) -> "EventPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- reading files -------------------------------------------------------------------------------

_INT_FIELDS = ("timestamp_ms", "updated_at_ms")
_FLOAT_FIELDS = ("value",)


def _csv_row(row: dict[str, str]) -> dict:
    doc: dict[str, Any] = {}
    for col, cell in row.items():
        if col is None or cell is None or cell == "":
            continue
        col = col.strip()
        head, dot, sub = col.partition(".")
        if dot and head in ("context", "attributes"):
            doc.setdefault(head, {})[sub] = cell
        elif col in _INT_FIELDS:
            doc[col] = int(float(cell))
        elif col in _FLOAT_FIELDS:
            doc[col] = float(cell)
        elif col == "timestamp":
            try:
                doc[col] = float(cell)
            except ValueError:
                doc[col] = cell  # ISO-8601
        elif col == "categories":
            doc[col] = [c.strip() for c in cell.split("|") if c.strip()]
        elif col == "available":
            doc[col] = cell.strip().lower() in ("1", "true", "yes", "y", "t")
        else:
            doc[col] = cell
    return doc


def read_records(stream: Iterable[str], fmt: str) -> Iterator[tuple[int, dict | None, str]]:
    """Yield (line number, record or None, error) from a JSONL or CSV text stream."""
    if fmt == "csv":
        for lineno, row in enumerate(csv.DictReader(stream), start=2):
            try:
                yield lineno, _csv_row(row), ""
            except ValueError as exc:
                yield lineno, None, f"bad number: {exc}"
        return
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:
            yield lineno, None, f"not JSON: {exc}"
            continue
        if not isinstance(doc, dict):
            yield lineno, None, "not a JSON object"
            continue
        yield lineno, doc, ""


class _PublishConfig(ServiceConfig):
    """Only the `kafka:` section matters here; any service's config file can be passed."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    kafka: KafkaConfig = KafkaConfig()


def _kafka_config(args, environ=None) -> KafkaConfig:
    """Where and as whom to publish. A config file's kafka section, or ``STREAMREC_KAFKA_*`` settings that name
    the security protocol, are used as they are. Otherwise the local stack: its mutual-TLS listener with
    ``--identity``'s certificate (the stack created the topics; an app may not), or with ``--plaintext`` its
    administrator's listener. ``--bootstrap-servers`` (or ``STREAMREC_KAFKA_BOOTSTRAP_SERVERS``) moves either."""
    environ = os.environ if environ is None else environ
    overrides = {"kafka": {"bootstrap_servers": args.bootstrap_servers}} if args.bootstrap_servers else None
    kafka = load_config(_PublishConfig, args.config, environ=environ, overrides=overrides).kafka
    if args.config or "STREAMREC_KAFKA_SECURITY_PROTOCOL" in environ:
        return kafka
    placed = bool(args.bootstrap_servers) or "STREAMREC_KAFKA_BOOTSTRAP_SERVERS" in environ
    if args.plaintext:
        return kafka if placed else kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{StackPorts.kafka}"})
    tls = cli_tls(args, environ)
    return kafka.model_copy(update={
        "bootstrap_servers": kafka.bootstrap_servers if placed else f"127.0.0.1:{StackPorts.kafka_tls}",
        "security_protocol": "SSL", "ssl_cafile": tls.ca_file, "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file, "topics": kafka.topics.model_copy(update={"create": False})})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamrec publish", description="Publish events or items from a JSONL/CSV file or stdin.")
    parser.add_argument("file", nargs="?", default="-", help="JSONL or CSV file; '-' (default) reads stdin")
    parser.add_argument("--kind", choices=("events", "items"), default="events")
    parser.add_argument("--format", choices=("auto", "jsonl", "csv"), default="auto", help="auto: by file extension, else JSONL")
    parser.add_argument("--config", help="a streamrec YAML config; only its kafka: section is used (its address, "
                                          "security and credentials; the TLS options below then do not apply)")
    parser.add_argument("--bootstrap-servers", help="overrides kafka.bootstrap_servers (default: the local stack's "
                                                    f"mutual-TLS listener, 127.0.0.1:{StackPorts.kafka_tls})")
    parser.add_argument("--tls-dir", default=None,
                        help=f"without --config: directory with ca.crt and <identity>.crt/.key (env {TLS_DIR_ENV}; "
                             f"default {DEFAULT_LOCAL_DIR}, where `streamrec up` puts them)")
    parser.add_argument("--identity", default="app", help="whose certificate to publish with (default app: allowed to "
                                                          "write the raw topics only)")
    parser.add_argument("--plaintext", action="store_true",
                        help=f"without --config: the local stack's administrator listener (127.0.0.1:{StackPorts.kafka}, "
                             "no TLS, no ACLs) instead")
    parser.add_argument("--rate", type=float, default=0.0, help="records per second (0: as fast as possible)")
    args = parser.parse_args(argv)
    try:
        kafka = _kafka_config(args)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    fmt = args.format
    if fmt == "auto":
        fmt = "csv" if args.file.lower().endswith(".csv") else "jsonl"
    try:
        stream = sys.stdin if args.file == "-" else open(Path(args.file), encoding="utf-8", newline="")
    except OSError as exc:
        print(f"streamrec publish: cannot open {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    bad = 0
    started = time.monotonic()
    with EventPublisher(kafka) as publisher:
        publish = publisher.publish_event if args.kind == "events" else publisher.publish_item
        for lineno, doc, error in read_records(stream, fmt):
            if doc is None:
                bad += 1
                print(f"{args.file}:{lineno}: skipped: {error}", file=sys.stderr)
                continue
            publish(doc)
            if args.rate > 0:
                delay = started + publisher.sent / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing to the requested rate, not waiting for an event
        publisher.flush()
        failures = publisher.take_failures()
        failed = len(failures)
        if failed:
            print(f"streamrec publish: {failed} records not delivered, the first: {failures[0]}", file=sys.stderr)
        topic = publisher.events_topic if args.kind == "events" else publisher.items_topic
    if stream is not sys.stdin:
        stream.close()
    print(json.dumps({"topic": topic, "published": publisher.sent - failed, "failed": failed, "skipped": bad,
                      "seconds": round(time.monotonic() - started, 3)}))
    return 0 if not (bad or failed) else 1


if __name__ == "__main__":
    sys.exit(main())
