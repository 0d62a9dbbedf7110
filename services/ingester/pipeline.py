"""The ingester's consume -> validate -> dedup -> produce -> commit loop.

One batch at a time: poll up to ``batch_max_records`` records, route each (events, items or dlq),
flush the producer, check that every produced record was acknowledged, and only then commit the
input offsets. A crash anywhere loses nothing (uncommitted input is read again) and the dedup window
(rebuilt from `events`, see dedup.py) keeps the replay from being double-counted. A delivery failure
stops the loop without committing; the process exits non-zero and is restarted.

The commit is sent without waiting for its answer: the next poll starts at once, so a record that
arrives meanwhile does not wait a round trip to the group coordinator (a quarter of a batch's time
at 1,000 events/s). One commit is in flight at a time, and each carries every partition's offset so
far, so a failed or skipped one is covered by the next; the loop sends it again when the stream is
quiet, and commits synchronously when partitions are revoked and when it stops.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition

from services.common.kafka import (
    CONTENT_TYPE_HEADER,
    PROTOBUF,
    commit_processed,
    ensure_topics,
    make_consumer,
    make_producer,
    subscribe,
)
from services.ingester.config import IngesterConfig
from services.ingester.dedup import DedupWindow, EventsTailReader
from services.ingester.metrics import IngesterMetrics
from services.ingester.validation import INTERNAL_ERROR, EventValidator, RecordRejected

logger = logging.getLogger(__name__)

PROTOBUF_HEADERS = [(CONTENT_TYPE_HEADER, PROTOBUF.encode())]
ERROR_CODE_HEADER = "streamrec.error.code"
ERROR_REASON_HEADER = "streamrec.error.reason"
SOURCE_TOPIC_HEADER = "streamrec.source.topic"
SOURCE_PARTITION_HEADER = "streamrec.source.partition"
SOURCE_OFFSET_HEADER = "streamrec.source.offset"


class DeliveryFailed(RuntimeError):
    """A produced record was not acknowledged; the batch is not committed."""


@dataclass
class _BatchOutput:
    """What one batch produced: the sends to await, the offsets to commit and the counts for the metrics."""

    futures: list = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # error code -> records sent to the DLQ
    records_in: int = 0
    events: int = 0
    items: int = 0
    duplicates: int = 0
    newest_ts: int = 0


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, ingester: "Ingester") -> None:
        self.ingester = ingester

    def on_partitions_revoked(self, revoked) -> None:
        # Every batch is acknowledged before the next poll (where rebalances run); its commit may still be
        # in flight, so the revoked partitions' offsets are committed here, and waited for.
        self.ingester.commit_now(revoked)
        for tp in revoked:
            try:
                self.ingester.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass

    def on_partitions_assigned(self, assigned) -> None:
        logger.info("partitions assigned", extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)})
        if assigned and self.ingester.tail_reader is not None:
            # Another replica may have produced records it never committed; take their ids in first.
            self.ingester.tail_reader.catch_up()
            self.ingester.metrics.dedup_window_ids.set(len(self.ingester.window))


class Ingester:
    """Owns the consumer, the producer, the validator and the dedup window."""

    def __init__(self, config: IngesterConfig, metrics: IngesterMetrics) -> None:
        self.config = config
        self.section = config.ingester
        self.metrics = metrics
        topics = config.kafka.topics
        self.events_raw = topics.name("events_raw")
        self.items_raw = topics.name("items_raw")
        self.events_topic = topics.name("events")
        self.items_topic = topics.name("items")
        self.dlq_topic = topics.name("dlq")
        self.validator = EventValidator(self.section)
        self.window = DedupWindow(self.section.dedup_window)
        self.tail_reader: EventsTailReader | None = None
        self.consumer = None
        self.producer = None
        self.ready = False
        self.records_committed = 0  # input records whose offsets are committed (benchmarks read it)
        self._records_acked = 0  # input records whose output is acknowledged
        self._acked: dict[TopicPartition, int] = {}  # next offset per partition, output acknowledged
        self._committing = None  # the commit in flight (a kafka Future), if any
        self._commit_wanted = False  # acknowledged offsets not yet sent in a commit
        self._commit_failing = False
        self._stop = threading.Event()
        self._last_lag = 0.0
        self._newest_ts = 0

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> "Ingester":
        kafka = self.config.kafka
        if kafka.topics.create:
            ensure_topics(kafka, [self.events_raw, self.items_raw, self.events_topic, self.items_topic, self.dlq_topic])
        self.producer = make_producer(kafka)
        if self.section.rebuild_dedup_window and self.section.dedup_window > 0:
            self.tail_reader = EventsTailReader(kafka, self.window)
            self.tail_reader.catch_up()
            self.metrics.dedup_window_ids.set(len(self.window))
        overrides = {"max_poll_records": self.section.batch_max_records}
        if self.section.group_instance_id:
            overrides["group_instance_id"] = self.section.group_instance_id
        self.consumer = make_consumer(kafka, None, self.section.group_id, **overrides)
        subscribe(self.consumer, [self.events_raw, self.items_raw], listener=_Rebalance(self))
        self.ready = True
        logger.info("ingester started", extra={"group_id": self.section.group_id, "inputs": [self.events_raw, self.items_raw]})
        return self

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit it and return (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Process batches until ``stop()``; raises DeliveryFailed (without committing) on a produce failure."""
        poll_ms = self.section.poll_timeout_ms
        try:
            while not self._stop.is_set():
                batch = self.consumer.poll(timeout_ms=poll_ms, max_records=self.section.batch_max_records)
                if batch:
                    self.process_batch(batch)
                else:
                    self._commit_async()  # a quiet stream: what is acknowledged but not committed yet
                now = time.monotonic()
                if now - self._last_lag >= self.section.lag_interval_s:
                    self._last_lag = now
                    self._update_lag()
        finally:
            self.ready = False

    def close(self) -> None:
        self.ready = False
        if self.consumer is not None:
            self.commit_now()
            self.consumer.close(autocommit=False)
            self.consumer = None
        if self.producer is not None:
            self.producer.close(timeout=10)
            self.producer = None

    # -- the hot loop -----------------------------------------------------------------------------

    def process_batch(self, batch: dict) -> None:
        started = time.perf_counter()
        out = self._produce(batch)
        self.producer.flush()
        for fut in out.futures:
            if fut.failed():
                raise DeliveryFailed(f"a produced record was not acknowledged: {fut.exception!r}")
        self._acked.update(out.next_offsets)
        self._records_acked += out.records_in
        self._commit_wanted = True
        self._commit_async()
        self._count(batch, out, started)

    # -- commits ----------------------------------------------------------------------------------

    def _commit_async(self) -> None:
        """Send the acknowledged offsets, unless nothing is new or a commit is still in flight (its answer
        comes back on the consumer's network thread; the next batch or a quiet poll sends what it lacks)."""
        if not self._commit_wanted or (self._committing is not None and not self._committing.is_done):
            return
        self._commit_wanted = False
        records = self._records_acked
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in self._acked.items()}
        self._committing = self.consumer.commit_async(offsets, callback=lambda _o, response: self._committed(records, response))

    def _committed(self, records: int, response) -> None:
        if isinstance(response, Exception):
            self._commit_wanted = True  # sent again with the next batch, or at the next quiet poll
            if not self._commit_failing:  # said once, not at every retry while Kafka is away
                self._commit_failing = True
                logger.warning("offset commit failed; sent again with the next one (if the group rebalanced, the "
                               "new owner reads those batches again and the dedup window drops them)",
                               extra={"error": repr(response)})
            return
        if self._commit_failing:
            self._commit_failing = False
            logger.info("offset commit succeeded again")
        self.records_committed = max(self.records_committed, records)

    def commit_now(self, partitions=None) -> None:
        """Commit the acknowledged offsets (of ``partitions``, default all) and wait for the answer; a failure
        is logged (the records are read again, and deduplicated). ``partitions`` are being revoked: their
        offsets are forgotten either way, so that a later commit cannot move back a new owner's."""
        offsets = {tp: off for tp, off in self._acked.items() if partitions is None or tp in partitions}
        if partitions is not None:
            for tp in offsets:
                del self._acked[tp]
        if not offsets or self.consumer is None:
            return
        try:
            commit_processed(self.consumer, offsets)
        except Exception as exc:  # noqa: BLE001 - stopping or rebalancing: nothing better to do than say so
            logger.warning("offsets not committed; those batches will be read again", extra={"error": repr(exc)})
            return
        if partitions is None:
            self.records_committed = self._records_acked

    def _produce(self, batch: dict) -> _BatchOutput:
        """Validate every record and send it on (or to the DLQ); nothing is flushed or committed here."""
        now_ms = int(time.time() * 1000)
        send = self.producer.send
        validator, window = self.validator, self.window
        events_topic, items_topic, dlq_topic = self.events_topic, self.items_topic, self.dlq_topic
        headers_out = PROTOBUF_HEADERS
        out = _BatchOutput()
        futures, rejected = out.futures, out.rejected
        n_events = n_items = dups = newest_ts = 0
        for tp, records in batch.items():
            is_events = tp.topic == self.events_raw
            out.records_in += len(records)
            for rec in records:
                ctype = None
                for hkey, hval in rec.headers or ():
                    if hkey.lower() == CONTENT_TYPE_HEADER:
                        ctype = hval
                        break
                try:
                    if is_events:
                        event = validator.event(rec.value, ctype, rec.timestamp, now_ms)
                        if not window.add(event.event_id):
                            dups += 1
                            continue
                        futures.append(send(events_topic, key=event.user_id.encode(), value=event.SerializeToString(),
                                            headers=headers_out))
                        n_events += 1
                        if event.timestamp_ms > newest_ts:
                            newest_ts = event.timestamp_ms
                    else:
                        item = validator.item(rec.value, ctype, rec.timestamp, now_ms)
                        futures.append(send(items_topic, key=item.item_id.encode(), value=item.SerializeToString(),
                                            headers=headers_out))
                        n_items += 1
                except RecordRejected as rej:
                    futures.append(self._to_dlq(send, dlq_topic, rec, rej.code, rej.reason))
                    rejected[rej.code] = rejected.get(rej.code, 0) + 1
                except Exception as exc:  # noqa: BLE001 - a validator bug must not stop the stream
                    logger.exception("unexpected error validating a record",
                                     extra={"topic": rec.topic, "partition": rec.partition, "offset": rec.offset})
                    futures.append(self._to_dlq(send, dlq_topic, rec, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:300]))
                    rejected[INTERNAL_ERROR] = rejected.get(INTERNAL_ERROR, 0) + 1
            out.next_offsets[tp] = records[-1].offset + 1
        out.events, out.items, out.duplicates, out.newest_ts = n_events, n_items, dups, newest_ts
        return out

    def _count(self, batch: dict, out: _BatchOutput, started: float) -> None:
        m = self.metrics
        m.batch_duration.observe(time.perf_counter() - started)
        m.batch_records.observe(out.records_in)
        m.records_in.labels(self.events_raw).inc(sum(len(r) for tp, r in batch.items() if tp.topic == self.events_raw))
        m.records_in.labels(self.items_raw).inc(sum(len(r) for tp, r in batch.items() if tp.topic == self.items_raw))
        if out.events:
            m.records_out.labels(self.events_topic).inc(out.events)
            if out.newest_ts > self._newest_ts:
                self._newest_ts = out.newest_ts
                m.last_event_timestamp.set(out.newest_ts / 1000.0)
        if out.items:
            m.records_out.labels(self.items_topic).inc(out.items)
        if out.rejected:
            m.records_out.labels(self.dlq_topic).inc(sum(out.rejected.values()))
            for code, count in out.rejected.items():
                m.rejected.labels(code).inc(count)
        if out.duplicates:
            m.dedup_hits.inc(out.duplicates)
        m.dedup_window_ids.set(len(self.window))

    @staticmethod
    def _to_dlq(send, dlq_topic: str, rec, code: str, reason: str):
        headers = list(rec.headers or ()) + [
            (ERROR_CODE_HEADER, code.encode()),
            (ERROR_REASON_HEADER, reason.encode("utf-8", "replace")),
            (SOURCE_TOPIC_HEADER, rec.topic.encode()),
            (SOURCE_PARTITION_HEADER, str(rec.partition).encode()),
            (SOURCE_OFFSET_HEADER, str(rec.offset).encode()),
        ]
        value = rec.value
        if value is None and rec.key is None:
            value = b""  # the client refuses a record with neither key nor value
        return send(dlq_topic, key=rec.key, value=value, headers=headers)

    def _update_lag(self) -> None:
        consumer = self.consumer
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                pos = consumer.position(tp)
            except Exception:  # noqa: BLE001 - lag is best effort
                continue
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - pos))
