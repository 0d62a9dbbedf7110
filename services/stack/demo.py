"""The demo stream: a synthetic (or loaded) dataset replayed into ``items.raw`` / ``events.raw`` in real time.

Timestamps are moved to "now" as records are published, so the ingester's freshness bounds accept
them and the freshness gauges mean something. An item is published just before the first event
that may refer to it, as a catalog would be updated before the item is shown. Records go out through
librdkafka (services/common/rdkafka.py), acks=all and idempotent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Iterable, Iterator

from recmodel.data import Event, Item

from services.common.config import KafkaConfig
from services.common.kafka import CONTENT_TYPE_HEADER, JSON
from services.common.rdkafka import Producer

logger = logging.getLogger(__name__)

_JSON_HEADERS = [(CONTENT_TYPE_HEADER, JSON.encode())]


def event_record(event: Event, timestamp_ms: int) -> bytes:
    return json.dumps({
        "event_id": event.event_id, "user_id": event.user_id, "item_id": event.item_id,
        "type": event.type, "value": event.value, "timestamp_ms": timestamp_ms, "context": dict(event.context),
    }).encode()


def item_record(item: Item) -> bytes:
    return json.dumps({
        "item_id": item.item_id, "title": item.title, "text": item.text, "categories": list(item.categories),
        "attributes": dict(item.attributes), "available": item.available,
    }).encode()


def publish_items(kafka: KafkaConfig, items: Iterable[Item]) -> int:
    """Publish catalog entries to ``items.raw`` and wait until the broker has them all; -> how many."""
    producer = Producer(kafka)
    n = 0
    try:
        for item in items:
            producer.send(kafka.topics.name("items_raw"), key=item.item_id.encode(), value=item_record(item),
                          headers=_JSON_HEADERS)
            n += 1
        producer.flush()
        _raise_failures(producer, "catalog records")
    finally:
        producer.close()
    return n


def _raise_failures(producer: Producer, what: str) -> None:
    failures = producer.take_failures()
    if failures:
        raise RuntimeError(f"{len(failures)} {what} not delivered, the first: {failures[0]}")


class DemoPublisher:
    """Publishes ``events`` at ``rate`` per second on a background thread, items just in time."""

    def __init__(
        self,
        kafka: KafkaConfig,
        items: Iterable[Item],
        events: Iterator[Event],
        rate: float = 100.0,
        limit: int | None = None,
    ) -> None:
        self._kafka = kafka
        self._pending_items = {item.item_id: item for item in items}
        self._events = events
        self._rate = rate
        self._limit = limit
        self.events_published = 0
        self.items_published = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-publisher", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> "DemoPublisher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        producer = Producer(self._kafka)
        events_topic = self._kafka.topics.name("events_raw")
        items_topic = self._kafka.topics.name("items_raw")
        start = time.monotonic()
        try:
            for event in self._events:
                if self._stop.is_set() or (self._limit is not None and self.events_published >= self._limit):
                    break
                item = self._pending_items.pop(event.item_id, None)
                if item is not None:
                    producer.send(items_topic, key=item.item_id.encode(), value=item_record(item), headers=_JSON_HEADERS)
                    self.items_published += 1
                now_ms = int(time.time() * 1000)
                producer.send(events_topic, key=event.user_id.encode(), value=event_record(event, now_ms),
                              headers=_JSON_HEADERS)
                self.events_published += 1
                producer.poll()  # delivery reports: only failures come back
                failures = producer.take_failures()
                if failures:
                    logger.warning("demo records not delivered", extra={"records": len(failures), "error": failures[0]})
                # Pace to the target rate without drifting: sleep until this event's slot.
                lag = self.events_published / self._rate - (time.monotonic() - start)
                if lag > 0:
                    self._stop.wait(lag)
            producer.flush()
            _raise_failures(producer, "demo records")
        except BaseException as exc:  # noqa: BLE001 - reported by the stack's progress line
            self.error = exc
            logger.exception("demo publisher failed")
        finally:
            producer.close()
            self.done.set()

    def publish_items_now(self, items: Iterable[Item]) -> None:
        """Publish catalog entries at once (the rest of the catalog without events, or new items)."""
        items = list(items)
        for item in items:
            self._pending_items.pop(item.item_id, None)
        self.items_published += publish_items(self._kafka, items)
