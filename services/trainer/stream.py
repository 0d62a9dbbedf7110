"""Reading `items` and `events` from exact offsets.

The trainer does not rely on consumer-group offsets for correctness: it assigns every partition
itself (one trainer trains at a time) and seeks to the offsets stored in its checkpoint, so each
event is trained exactly once in the state that survives. Group offsets are still committed after
each checkpoint, only so that lag shows up in the usual Kafka tooling.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass, field

from recmodel.data import Event, Item
from services.common import rdkafka
from streamrec_proto.v1 import event_pb2

logger = logging.getLogger(__name__)


def decode_event(value: bytes) -> Event | None:
    """A normalised `events` record as a recmodel Event; None when it cannot be used."""
    try:
        msg = event_pb2.Event.FromString(value)
    except Exception:  # noqa: BLE001 - an undecodable record is counted and skipped, never fatal
        return None
    if not msg.user_id or not msg.item_id or not msg.type:
        return None
    return Event(event_id=msg.event_id, user_id=msg.user_id, item_id=msg.item_id, type=msg.type.lower(),
                 value=float(msg.value), timestamp_ms=int(msg.timestamp_ms), context=dict(msg.context))


def decode_item(value: bytes | None) -> Item | None:
    if not value:
        return None  # a tombstone: compaction removes the key; the trainer keeps what it learnt
    try:
        msg = event_pb2.Item.FromString(value)
    except Exception:  # noqa: BLE001 - an undecodable record is counted and skipped, never fatal
        return None
    if not msg.item_id:
        return None
    return Item(item_id=msg.item_id, title=msg.title, text=msg.text, categories=tuple(msg.categories),
                attributes=dict(msg.attributes), available=msg.available if msg.HasField("available") else True)


@dataclass
class EventBatch:
    events: list[Event]
    next_offsets: dict[int, int]  # partition -> offset after the last record of this batch
    records: int  # records consumed (events + undecodable ones)
    skipped: int
    newest_ms: int = 0
    partitions: dict[int, int] = field(default_factory=dict)  # partition -> records in this batch


class EventReader(rdkafka.PartitionReader):
    """`events` from the checkpointed offsets, in micro-batches that ``advance_past`` marks as trained."""
    def next_batch(self, timeout_ms: int) -> EventBatch | None:
        """The next micro-batch, partitions interleaved by event time, each partition in offset order."""
        polled = self.poll(timeout_ms)
        if not polled:
            return None
        streams, skipped, records = [], 0, 0
        next_offsets: dict[int, int] = {}
        counts: dict[int, int] = {}
        for partition, recs in polled.items():
            decoded = []
            for r in recs:
                event = decode_event(r.value())
                if event is None:
                    skipped += 1
                    logger.warning("undecodable record on events", extra={
                        "topic": self.topic, "partition": partition, "offset": r.offset()})
                else:
                    decoded.append(event)
            records += len(recs)
            counts[partition] = len(recs)
            next_offsets[partition] = recs[-1].offset() + 1
            streams.append(decoded)
        # heapq.merge keeps each partition's order (one user's events stay in order) while interleaving by time.
        events = list(heapq.merge(*streams, key=lambda e: e.timestamp_ms))
        newest = max((e.timestamp_ms for e in events), default=0)
        return EventBatch(events, next_offsets, records, skipped, newest, counts)

    def advance_past(self, batch: EventBatch) -> None:
        """Mark the batch as processed (call only once its events are in the trainer's state)."""
        self.advance(batch.next_offsets)


class ItemReader(rdkafka.PartitionReader):
    """The `items` catalog, decoded as it is read."""
    def read_available(self, timeout_ms: int = 0) -> list[Item]:
        return _decode_items(recs for recs in self.read(timeout_ms).values())

    def read_to_end(self, timeout_s: float) -> list[Item]:
        """Everything up to the current end of the topic (bounded by ``timeout_s`` in all). While the brokers cannot
        say where the end is within that time (a node away), what has already arrived: the catalog is caught up on
        the next call, and training (and a stop) goes on meanwhile."""
        deadline = time.monotonic() + timeout_s
        try:
            ends = self.end_offsets(timeout_s)
        except rdkafka.KafkaException as exc:
            logger.warning("cannot find the end of the catalog; training on with what has arrived",
                           extra={"topic": self.topic, "error": str(exc)})
            return self.read_available(0)
        return _decode_items(self.read_to(ends, max(0.0, deadline - time.monotonic())))


def _decode_items(batches) -> list[Item]:
    return [item for records in batches for r in records if (item := decode_item(r.value())) is not None]
