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

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from recmodel.data import Event, Item
from services.common.config import KafkaConfig
from services.common.kafka import commit_processed, make_consumer, partitions_for
from streamrec_proto.v1 import event_pb2

logger = logging.getLogger(__name__)


def decode_event(value: bytes) -> Event | None:
    """A normalised `events` record as a recmodel Event; None when it cannot be used."""
    try:
        msg = event_pb2.Event.FromString(value)
    except Exception:
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
    except Exception:
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


class TopicReader:
    """All partitions of one topic, assigned manually and positioned at given offsets."""

    def __init__(self, config: KafkaConfig, topic: str, group_id: str | None, max_records: int) -> None:
        self.topic = topic
        self.consumer: KafkaConsumer = make_consumer(config, None, group_id, max_poll_records=max_records)
        self.offsets: dict[int, int] = {}  # partition -> next offset to process
        self.max_records = max_records

    def assign(self, offsets: dict[int, int]) -> None:
        """Assign every partition; seek to ``offsets`` (partition -> next offset), others to the beginning."""
        parts = partitions_for(self.consumer, self.topic)
        self.consumer.assign(parts)
        begins = self.consumer.beginning_offsets(parts)
        self.offsets = {}
        for tp in parts:
            want = offsets.get(tp.partition)
            # An offset below the log start (retention deleted it) cannot be re-read: start at the log start.
            start = begins[tp] if want is None else max(want, begins[tp])
            if want is not None and want < begins[tp]:
                logger.warning("checkpointed offset no longer in the log", extra={
                    "topic": self.topic, "partition": tp.partition, "offset": want, "log_start": begins[tp]})
            self.consumer.seek(tp, start)
            self.offsets[tp.partition] = start
        logger.info("partitions assigned", extra={"topic": self.topic, "offsets": dict(self.offsets)})

    def refresh_partitions(self) -> None:
        """Pick up partitions added to the topic since assignment (read from their beginning)."""
        parts = self.consumer.partitions_for_topic(self.topic) or set()
        if set(parts) - set(self.offsets):
            self.assign(dict(self.offsets))

    def poll(self, timeout_ms: int) -> dict[int, list]:
        """Records per partition, with any already processed (offset below our position) dropped."""
        out: dict[int, list] = {}
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_records).items():
            expected = self.offsets.get(tp.partition)
            if expected is None:
                continue
            fresh = [r for r in records if r.offset >= expected]
            if fresh:
                out[tp.partition] = fresh
        return out

    def end_offsets(self) -> dict[int, int]:
        parts = [TopicPartition(self.topic, p) for p in self.offsets]
        return {tp.partition: off for tp, off in self.consumer.end_offsets(parts).items()}

    def lag(self) -> dict[int, int]:
        return {p: max(0, end - self.offsets.get(p, 0)) for p, end in self.end_offsets().items()}

    def commit(self) -> None:
        """Commit our positions to the group (lag visibility only; never read back)."""
        if self.consumer.config.get("group_id") is None:
            return
        try:
            commit_processed(self.consumer, {TopicPartition(self.topic, p): o for p, o in self.offsets.items()})
        except KafkaError as exc:
            logger.warning("offset commit failed (lag display only)", extra={"topic": self.topic, "error": str(exc)})

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class EventReader(TopicReader):
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
                event = decode_event(r.value)
                if event is None:
                    skipped += 1
                    logger.warning("undecodable record on events", extra={
                        "topic": self.topic, "partition": partition, "offset": r.offset})
                else:
                    decoded.append(event)
            records += len(recs)
            counts[partition] = len(recs)
            next_offsets[partition] = recs[-1].offset + 1
            streams.append(decoded)
        # heapq.merge keeps each partition's order (one user's events stay in order) while interleaving by time.
        events = list(heapq.merge(*streams, key=lambda e: e.timestamp_ms))
        newest = max((e.timestamp_ms for e in events), default=0)
        return EventBatch(events, next_offsets, records, skipped, newest, counts)

    def advance(self, batch: EventBatch) -> None:
        """Mark the batch as processed (call only once its events are in the trainer's state)."""
        self.offsets.update(batch.next_offsets)


class ItemReader(TopicReader):
    def read_available(self, timeout_ms: int = 0) -> list[Item]:
        items: list[Item] = []
        for partition, recs in self.poll(timeout_ms).items():
            for r in recs:
                item = decode_item(r.value)
                if item is not None:
                    items.append(item)
            self.offsets[partition] = recs[-1].offset + 1
        return items

    def read_to_end(self, timeout_s: float) -> list[Item]:
        """Everything up to the current end of the topic (bounded by ``timeout_s``)."""
        ends = self.end_offsets()
        items: list[Item] = []
        deadline = time.monotonic() + timeout_s
        while any(self.offsets.get(p, 0) < end for p, end in ends.items()) and time.monotonic() < deadline:
            items.extend(self.read_available(timeout_ms=100))
            # Compaction can leave the end offset pointing past the last record: trust the position.
            for p, end in ends.items():
                try:
                    pos = self.consumer.position(TopicPartition(self.topic, p))
                except KafkaError:
                    continue
                if pos >= end:
                    self.offsets[p] = max(self.offsets.get(p, 0), pos)
        return items
