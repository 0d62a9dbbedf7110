"""OutboxAnnouncer: announces committed changes on the compacted model-versions topic, in order.

Rows are read in id order, sent one batch at a time (key = model name), and each is deleted once
the broker acknowledged it. While Kafka is unreachable the thread keeps retrying, so a change is
durable at once and announced when Kafka returns. A crash between the ack and the delete re-sends
some rows: consumers ignore events whose ``sequence`` they have seen. The producer is librdkafka's
(services/common/rdkafka.py), acks=all and idempotent, with a Delivery per record.

A record that can never be sent (larger than ``max_bytes``, or refused by Kafka as too large) is
parked: moved to ``parked_announcements`` in one transaction, counted in
``streamrec_registry_outbox_parked_records`` and listed by ``streamrec models list``, so it blocks
nothing behind it. The registry's state is unaffected: announcements only tell others about it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from sqlalchemy import delete, func, insert, select

from services.common.config import KafkaConfig
from services.common.kafka import CONTENT_TYPE_HEADER, PROTOBUF, ensure_topics
from services.common.rdkafka import Delivery, KafkaError, KafkaException, Producer
from services.registry.database import Database, outbox, parked_announcements
from services.registry.metrics import RegistryMetrics
from streamrec_proto.v1 import registry_pb2

logger = logging.getLogger(__name__)


class OutboxAnnouncer:
    def __init__(self, db: Database, kafka: KafkaConfig, metrics: RegistryMetrics | None = None,
                 retry_s: float = 1.0, timeout_s: float = 10.0, batch: int = 100,
                 max_bytes: int = 512 * 1024) -> None:
        self.db = db
        self.kafka = kafka
        self.topic = kafka.topics.name("model_versions")
        self.metrics = metrics
        self.retry_s, self.timeout_s = retry_s, timeout_s
        self.batch, self.max_bytes = batch, max_bytes  # rows per send; the largest announcement Kafka is sent
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._producer: Producer | None = None
        # (row id, model name, record bytes, its Delivery) of the batch the producer is delivering.
        self._inflight: list[tuple[int, str, bytes, Delivery]] | None = None
        self._solo_until: int | None = None  # send rows up to this id one at a time
        self._topic_ready = False
        self._thread = threading.Thread(target=self._run, name="outbox-announcer", daemon=True)
        self.published = 0
        if metrics is not None:  # counted when scraped: a drain is visible the moment it is committed
            metrics.outbox_backlog.set_function(lambda: self._count(outbox))
            metrics.outbox_parked.set_function(lambda: self._count(parked_announcements))

    def start(self) -> "OutboxAnnouncer":
        self._thread.start()
        return self

    def wake(self) -> None:
        """Called after every commit so announcements go out at once rather than on the next poll."""
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self._close_producer()

    def backlog(self) -> int:
        return self._rows(outbox)

    def _rows(self, table) -> int:
        with self.db.read() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar_one()

    def _count(self, table) -> float:
        """Rows in ``table`` for a gauge; NaN while the database does not answer (a scrape never fails on it)."""
        try:
            return float(self._rows(table))
        except Exception:  # noqa: BLE001 - the database may be away; the gauge says "unknown"
            return float("nan")

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            self._wake.clear()
            try:
                sent = self.publish_pending()
                if failing:
                    logger.info("kafka reachable again; outbox drained")
                failing = False
                if sent:
                    continue  # there may be more
                self._wake.wait(self.retry_s)
            except Exception as exc:  # noqa: BLE001 - keep retrying whatever Kafka or the DB says
                if not failing:
                    logger.warning("cannot announce model changes yet; will retry",
                                   extra={"topic": self.topic, "error": repr(exc)})
                failing = True
                if self._inflight is None:  # nothing the producer is still retrying: start afresh
                    self._close_producer()
                self._stop.wait(self.retry_s)

    def publish_pending(self) -> int:
        """Send one batch of pending rows and delete each once acknowledged; returns how many left the outbox.

        A batch that times out stays in flight: the producer keeps retrying it, and the next call
        waits for the same records instead of sending copies. Rows whose delivery failed for a
        passing reason are sent again, on a fresh producer; rows that can never be sent are parked.
        """
        parked = 0
        if self._inflight is None:
            parked = self._send_next_batch()
            if self._inflight is None:
                return parked
        return parked + self._settle_inflight()

    def _send_next_batch(self) -> int:
        """Send the oldest pending rows (they become ``_inflight``); -> rows parked as too large."""
        # After Kafka refused a record of a batch, go one record at a time through that batch:
        # the producer fails every record in flight with the same error, so only a record sent
        # alone shows whether it is the one that can never be sent.
        limit = self.batch if self._solo_until is None else 1
        with self.db.read() as conn:
            rows = conn.execute(select(outbox.c.id, outbox.c.model_name, outbox.c.payload)
                                .order_by(outbox.c.id).limit(limit)).all()
        if rows and self._solo_until is not None and rows[-1][0] >= self._solo_until:
            self._solo_until = None
        parked, inflight = 0, []
        producer = self._ensure_producer() if rows else None
        for row_id, model_name, payload in rows:
            event = registry_pb2.ModelVersionEvent.FromString(payload)
            event.sequence = row_id
            value = event.SerializeToString()
            if len(value) > self.max_bytes:
                self._park(row_id, model_name, value, f"{len(value)} bytes is over the {self.max_bytes}-byte limit")
                parked += 1
                continue
            future = producer.send(self.topic, key=model_name.encode(), value=value,
                                   headers=[(CONTENT_TYPE_HEADER, PROTOBUF.encode())])
            inflight.append((row_id, model_name, value, future))
        self._inflight = inflight or None
        return parked

    def _settle_inflight(self) -> int:
        """Wait for the batch in flight; delete what was acknowledged, park what can never be sent; -> rows done."""
        parked = 0
        unanswered = self._producer.flush(self.timeout_s)
        if unanswered:  # Kafka is away: the batch stays in flight, the producer keeps retrying it
            raise TimeoutError(f"{unanswered} announcements not acknowledged within {self.timeout_s:.0f}s")
        acked, refused, failure = [], [], None
        inflight, self._inflight = self._inflight, None
        for row_id, model_name, value, delivery in inflight:
            error = delivery.exception(timeout=0)
            if error is None:
                acked.append(row_id)
            elif _never_sendable(error):
                refused.append((row_id, model_name, value, error))
            else:
                failure = failure or error
        if refused:
            self._close_producer()  # the producer aborted everything in flight: start a fresh one
            if len(inflight) == 1:
                row_id, model_name, value, exc = refused[0]
                self._park(row_id, model_name, value, f"Kafka refused it: {exc}")
                parked += 1
            else:
                self._solo_until = inflight[-1][0]
                failure = None  # not a Kafka outage: go on at once, one record at a time
        if acked:
            with self.db.write() as conn:
                conn.execute(delete(outbox).where(outbox.c.id.in_(acked)))
            self.published += len(acked)
            logger.debug("announced", extra={"topic": self.topic, "count": len(acked), "last_sequence": acked[-1]})
        if failure is not None:
            raise failure
        return len(acked) + parked

    def _park(self, row_id: int, model_name: str, value: bytes, reason: str) -> None:
        event = registry_pb2.ModelVersionEvent.FromString(value)
        with self.db.write() as conn:
            conn.execute(insert(parked_announcements).values(
                id=row_id, model_name=model_name, payload=value, size_bytes=len(value), reason=reason,
                parked_at_ms=int(time.time() * 1000)))
            conn.execute(delete(outbox).where(outbox.c.id == row_id))
        logger.error("announcement can never be sent; parked it so later ones go out",
                     extra={"topic": self.topic, "model": model_name, "sequence": row_id, "action": event.action,
                            "model_version": event.version, "bytes": len(value), "reason": reason})

    def parked(self, model_name: str) -> list[registry_pb2.ParkedAnnouncement]:
        """Parked announcements of one model, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(select(parked_announcements).where(parked_announcements.c.model_name == model_name)
                                .order_by(parked_announcements.c.id)).all()
        out = []
        for row in rows:
            event = registry_pb2.ModelVersionEvent.FromString(row.payload)
            out.append(registry_pb2.ParkedAnnouncement(
                sequence=row.id, action=event.action, version=event.version, size_bytes=row.size_bytes,
                reason=row.reason, parked_at_ms=row.parked_at_ms))
        return out

    def _ensure_producer(self):
        if self._producer is None:
            # ensure_topics' kafka-python admin client blocks for up to 30 s bootstrapping an absent cluster;
            # a plain connect first keeps retries (and shutdown) snappy while Kafka is away.
            self._check_reachable()
            if not self._topic_ready and self.kafka.topics.create:
                ensure_topics(self.kafka, [self.topic], timeout_s=self.timeout_s)
            self._topic_ready = True
            self._producer = Producer(self.kafka, futures=True, **{"linger.ms": 0})
        return self._producer

    def _check_reachable(self) -> None:
        errors = []
        for server in self.kafka.bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=min(self.timeout_s, 2.0)).close()
                return
            except OSError as exc:
                errors.append(f"{server}: {exc.strerror or exc}")
        raise ConnectionError(f"no Kafka bootstrap server reachable ({'; '.join(errors)})")

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout_s=0)
            except Exception:  # noqa: BLE001 - closing a broken producer may fail; it is discarded anyway
                pass

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Block until the outbox is empty (tests and graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.backlog() == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return False


# Kafka refused the record itself: too large (for the topic's max.message.bytes, or for the client's
# message.max.bytes before it was sent), or refused by the broker's record validation.
_NEVER_SENDABLE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD})


def _never_sendable(exc: BaseException | None) -> bool:
    """Kafka refused the record itself: sending it again cannot succeed."""
    return (isinstance(exc, KafkaException) and bool(exc.args) and isinstance(exc.args[0], KafkaError)
            and exc.args[0].code() in _NEVER_SENDABLE)
