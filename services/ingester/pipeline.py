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

The consumer and the producer are librdkafka's (services/common/rdkafka.py says why).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from services.common import rdkafka
from services.common.kafka import CONTENT_TYPE_HEADER, PROTOBUF, ensure_topics
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


# An asynchronous commit not answered within this long is taken as lost, and sent again.
COMMIT_ANSWER_S = 30.0
NO_TIMESTAMP = rdkafka.TIMESTAMP_NOT_AVAILABLE


class DeliveryFailed(RuntimeError):
    """A produced record was not acknowledged; the batch is not committed."""


@dataclass
class _BatchOutput:
    """What one batch produced: the offsets to commit and the counts for the metrics."""

    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> next offset
    rejected: dict[str, int] = field(default_factory=dict)  # error code -> records sent to the DLQ
    records_in: int = 0
    events: int = 0
    items: int = 0
    duplicates: int = 0
    newest_ts: int = 0


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
        self._acked: dict[tuple[str, int], int] = {}  # next offset per (topic, partition), output acknowledged
        self._committing: float | None = None  # when the commit in flight was sent (answered at a later poll)
        self._committing_records = 0
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
        self.producer = rdkafka.Producer(kafka)
        if self.section.rebuild_dedup_window and self.section.dedup_window > 0:
            self.tail_reader = EventsTailReader(kafka, self.window, self.section.group_id)
            self.tail_reader.catch_up()
            self.metrics.dedup_window_ids.set(len(self.window))
        overrides = {"group.instance.id": self.section.group_instance_id} if self.section.group_instance_id else {}
        self.consumer = rdkafka.make_consumer(kafka, self.section.group_id, on_commit=self._committed, **overrides)
        self.consumer.subscribe([self.events_raw, self.items_raw], on_assign=self._assigned, on_revoke=self._revoked)
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
        poll_s = self.section.poll_timeout_ms / 1000
        try:
            while not self._stop.is_set():
                batch = self._poll(poll_s)
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
            rdkafka.close_consumer(self.consumer)
            self.consumer = None
        if self.producer is not None:
            self.producer.close(timeout_s=10)
            self.producer = None

    # -- the consumer -----------------------------------------------------------------------------

    def _poll(self, timeout_s: float) -> dict[tuple[str, int], list]:
        """Up to ``batch_max_records`` records, per (topic, partition) in offset order: waits up to ``timeout_s``
        for the first, then takes what has arrived with it (``consume`` alone would wait for the whole batch)."""
        batch: dict[tuple[str, int], list] = {}
        for msg in rdkafka.poll_batch(self.consumer, self.section.batch_max_records, timeout_s):
            key = (msg.topic(), msg.partition())
            records = batch.get(key)
            if records is None:
                batch[key] = [msg]
            else:
                records.append(msg)
        return batch

    def _revoked(self, consumer, partitions) -> None:
        # Every batch is acknowledged before the next poll (where rebalances run); its commit may still be
        # in flight, so the revoked partitions' offsets are committed here, and waited for.
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self.commit_now(revoked)
        for topic, partition in revoked:
            try:
                self.metrics.consumer_lag.remove(topic, str(partition))
            except KeyError:
                pass

    def _assigned(self, consumer, partitions) -> None:
        logger.info("partitions assigned", extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in partitions)})
        if partitions and self.tail_reader is not None:
            # Another replica may have produced records it never committed; take their ids in first.
            self.tail_reader.catch_up()
            self.metrics.dedup_window_ids.set(len(self.window))

    # -- the hot loop -----------------------------------------------------------------------------

    def process_batch(self, batch: dict) -> None:
        started = time.perf_counter()
        out = self._produce(batch)
        left = self.producer.flush()
        failures = self.producer.take_failures()
        if failures or left:
            raise DeliveryFailed(f"{len(failures) + left} produced records were not acknowledged: {failures[:3]}")
        self._acked.update(out.next_offsets)
        self._records_acked += out.records_in
        self._commit_wanted = True
        self._commit_async()
        self._count(batch, out, started)

    # -- commits ----------------------------------------------------------------------------------

    def _commit_async(self) -> None:
        """Send the acknowledged offsets, unless nothing is new or a commit is still in flight (its answer
        comes to ``_committed`` during a later poll; the next batch or a quiet poll sends what it lacks)."""
        in_flight = self._committing is not None and time.monotonic() - self._committing < COMMIT_ANSWER_S
        if not self._commit_wanted or in_flight or not self._acked:
            return
        self._commit_wanted = False
        self._committing, self._committing_records = time.monotonic(), self._records_acked
        try:
            self.consumer.commit(offsets=_offsets(self._acked), asynchronous=True)
        except rdkafka.KafkaException as exc:
            self._committed(exc.args[0] if exc.args else exc, None)

    def _committed(self, err, partitions) -> None:
        """The answer to an asynchronous commit (librdkafka calls it from a poll, on this thread)."""
        self._committing = None
        failed = err or next((tp.error for tp in partitions or () if tp.error), None)
        if failed is not None:
            self._commit_wanted = True  # sent again with the next batch, or at the next quiet poll
            if not self._commit_failing:  # said once, not at every retry while Kafka is away
                self._commit_failing = True
                logger.warning("offset commit failed; sent again with the next one (if the group rebalanced, the "
                               "new owner reads those batches again and the dedup window drops them)",
                               extra={"error": str(failed)})
            return
        if self._commit_failing:
            self._commit_failing = False
            logger.info("offset commit succeeded again")
        self.records_committed = max(self.records_committed, self._committing_records)

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
        consumer = self.consumer
        try:
            answer = rdkafka.bounded(lambda: consumer.commit(offsets=_offsets(offsets), asynchronous=False),
                                     "an offset commit")
            failed = [f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in answer or () if tp.error]
        except (TimeoutError, rdkafka.KafkaException) as exc:
            failed = [str(exc)]
        if failed:  # stopping or rebalancing: nothing better to do than say so
            logger.warning("offsets not committed; those batches will be read again", extra={"error": failed})
            return
        if partitions is None:
            self.records_committed = self._records_acked
            self._acked.clear()  # committed: the revoke that closing the consumer brings has nothing to send again

    def _produce(self, batch: dict) -> _BatchOutput:
        """Validate every record and send it on (or to the DLQ); nothing is flushed or committed here."""
        now_ms = int(time.time() * 1000)
        send = self.producer.send
        validator, window = self.validator, self.window
        events_topic, items_topic, dlq_topic = self.events_topic, self.items_topic, self.dlq_topic
        headers_out = PROTOBUF_HEADERS
        out = _BatchOutput()
        rejected = out.rejected
        n_events = n_items = dups = newest_ts = 0
        for tp, records in batch.items():
            is_events = tp[0] == self.events_raw
            out.records_in += len(records)
            for rec in records:
                ctype = None
                for hkey, hval in rec.headers() or ():
                    if hkey.lower() == CONTENT_TYPE_HEADER:
                        ctype = hval
                        break
                ts_type, ts = rec.timestamp()
                record_ts = ts if ts_type != NO_TIMESTAMP else None
                try:
                    if is_events:
                        event = validator.event(rec.value(), ctype, record_ts, now_ms)
                        if not window.add(event.event_id):
                            dups += 1
                            continue
                        send(events_topic, key=event.user_id.encode(), value=event.SerializeToString(), headers=headers_out)
                        n_events += 1
                        if event.timestamp_ms > newest_ts:
                            newest_ts = event.timestamp_ms
                    else:
                        item = validator.item(rec.value(), ctype, record_ts, now_ms)
                        send(items_topic, key=item.item_id.encode(), value=item.SerializeToString(), headers=headers_out)
                        n_items += 1
                except RecordRejected as rej:
                    self._to_dlq(send, dlq_topic, rec, rej.code, rej.reason)
                    rejected[rej.code] = rejected.get(rej.code, 0) + 1
                except Exception as exc:  # noqa: BLE001 - a validator bug must not stop the stream
                    logger.exception("unexpected error validating a record",
                                     extra={"topic": rec.topic(), "partition": rec.partition(), "offset": rec.offset()})
                    self._to_dlq(send, dlq_topic, rec, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:300])
                    rejected[INTERNAL_ERROR] = rejected.get(INTERNAL_ERROR, 0) + 1
            out.next_offsets[tp] = records[-1].offset() + 1
        out.events, out.items, out.duplicates, out.newest_ts = n_events, n_items, dups, newest_ts
        return out

    def _count(self, batch: dict, out: _BatchOutput, started: float) -> None:
        m = self.metrics
        m.batch_duration.observe(time.perf_counter() - started)
        m.batch_records.observe(out.records_in)
        m.records_in.labels(self.events_raw).inc(sum(len(r) for tp, r in batch.items() if tp[0] == self.events_raw))
        m.records_in.labels(self.items_raw).inc(sum(len(r) for tp, r in batch.items() if tp[0] == self.items_raw))
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
    def _to_dlq(send, dlq_topic: str, rec, code: str, reason: str) -> None:
        headers = list(rec.headers() or ()) + [
            (ERROR_CODE_HEADER, code.encode()),
            (ERROR_REASON_HEADER, reason.encode("utf-8", "replace")),
            (SOURCE_TOPIC_HEADER, rec.topic().encode()),
            (SOURCE_PARTITION_HEADER, str(rec.partition()).encode()),
            (SOURCE_OFFSET_HEADER, str(rec.offset()).encode()),
        ]
        send(dlq_topic, key=rec.key(), value=rec.value(), headers=headers)

    def _update_lag(self) -> None:
        """Records between the position and the end of each assigned partition (the ends as of the last fetch)."""
        consumer = self.consumer
        try:
            positions = consumer.position(consumer.assignment())
        except rdkafka.KafkaException:
            return  # lag is best effort
        for tp in positions:
            if tp.offset < 0:
                continue  # nothing consumed there yet
            try:
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
            except rdkafka.KafkaException:
                continue
            if high >= 0:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))


def _offsets(next_offsets: dict[tuple[str, int], int]) -> list:
    return [rdkafka.TopicPartition(topic, partition, offset) for (topic, partition), offset in next_offsets.items()]
