"""OutboxPublisher: announces committed changes on the compacted model-versions topic, in order.

Rows are read in id order, sent one batch at a time (key = model name), and deleted only after
the broker acknowledged every record of the batch. While Kafka is unreachable the thread keeps
retrying, so a change is durable at once and announced when Kafka returns. A crash between the
ack and the delete re-sends some rows: consumers ignore events whose ``sequence`` they have seen.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from sqlalchemy import delete, func, select

from services.common.config import KafkaConfig
from services.common.kafka import CONTENT_TYPE_HEADER, PROTOBUF, ensure_topics, make_producer
from services.registry.database import Database, outbox
from services.registry.metrics import RegistryMetrics
from streamrec_proto.v1 import registry_pb2

logger = logging.getLogger(__name__)


class OutboxPublisher:
    def __init__(self, db: Database, kafka: KafkaConfig, metrics: RegistryMetrics | None = None,
                 retry_s: float = 1.0, timeout_s: float = 10.0, batch: int = 100) -> None:
        self.db = db
        self.kafka = kafka
        self.topic = kafka.topics.name("model_versions")
        self.metrics = metrics
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self.batch = batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._producer = None
        self._inflight: tuple[list[int], list] | None = None
        self._topic_ready = False
        self._thread = threading.Thread(target=self._run, name="outbox-publisher", daemon=True)
        self.published = 0

    def start(self) -> "OutboxPublisher":
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
        with self.db.read() as conn:
            return conn.execute(select(func.count()).select_from(outbox)).scalar_one()

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
            finally:
                self._update_backlog()

    def publish_pending(self) -> int:
        """Send one batch of pending rows and delete them once acknowledged; returns how many.

        A batch that times out stays in flight: the producer keeps retrying it, and the next call
        waits for the same records instead of sending copies. Only a batch whose delivery failed
        outright is sent again, on a fresh producer.
        """
        if self._inflight is None:
            with self.db.read() as conn:
                rows = conn.execute(select(outbox.c.id, outbox.c.model_name, outbox.c.payload)
                                    .order_by(outbox.c.id).limit(self.batch)).all()
            if not rows:
                return 0
            producer = self._ensure_producer()
            futures = []
            for row_id, model_name, payload in rows:
                event = registry_pb2.ModelVersionEvent.FromString(payload)
                event.sequence = row_id
                futures.append(producer.send(self.topic, key=model_name.encode(), value=event.SerializeToString(),
                                             headers=[(CONTENT_TYPE_HEADER, PROTOBUF.encode())]))
            self._inflight = ([r[0] for r in rows], futures)
        ids, futures = self._inflight
        self._producer.flush(timeout=self.timeout_s)  # raises KafkaTimeoutError while Kafka is away
        failed = next((f.exception for f in futures if f.failed()), None)
        if failed is not None:
            self._inflight = None
            raise failed
        with self.db.write() as conn:
            conn.execute(delete(outbox).where(outbox.c.id.in_(ids)))
        self._inflight = None
        self.published += len(ids)
        self._update_backlog()
        logger.debug("announced", extra={"topic": self.topic, "count": len(ids), "last_sequence": ids[-1]})
        return len(ids)

    def _ensure_producer(self):
        if self._producer is None:
            # kafka-python's clients block for up to 30 s bootstrapping an absent cluster; a plain
            # connect first keeps retries (and shutdown) snappy while Kafka is away.
            self._check_reachable()
            if not self._topic_ready and self.kafka.topics.create:
                ensure_topics(self.kafka, [self.topic], timeout_s=self.timeout_s)
            self._topic_ready = True
            self._producer = make_producer(self.kafka, max_block_ms=int(self.timeout_s * 1000), linger_ms=0)
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
                producer.close(timeout=0)
            except Exception:  # noqa: BLE001 - closing a broken producer may fail; it is discarded anyway
                pass

    def _update_backlog(self) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.outbox_backlog.set(self.backlog())
        except Exception:  # noqa: BLE001
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
