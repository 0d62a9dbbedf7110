"""Follows the compacted ``model-versions`` topic and keeps the repository on the aliases it names.

The topic is read from the beginning on every start (it is compacted, so that is the latest record
per model plus a little history). For the configured model the newest event (by ``sequence``)
decides the wanted ``production`` (and ``canary``) versions; a version that differs from the loaded
one is loaded beside it and swapped in. A version that fails is logged once, counted, and not retried
until an event names it again; the old version keeps serving. The loop runs supervised: if it dies
it is restarted with backoff (and reads the topic again from the beginning).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from services.common.config import KafkaConfig
from services.common.rdkafka import KafkaException, PartitionReader
from services.common.supervision import SupervisedThread
from services.inference.loader import ModelLoader
from services.inference.served_model import ServedModel
from services.inference.repository import CANARY, PRODUCTION, ModelRepository

logger = logging.getLogger(__name__)

PARTITION_REFRESH_S = 5.0  # how often to look for partitions added to the topic


class ModelVersionWatcher:
    def __init__(
        self,
        kafka: KafkaConfig,
        model_name: str,
        loader: ModelLoader,
        repository: ModelRepository,
        *,
        follow_canary: bool = False,
        on_loaded: Callable[[str, ServedModel], None] | None = None,
        on_failure: Callable[[str, int, BaseException], None] | None = None,
        on_load_seconds: Callable[[float], None] | None = None,
        on_loop_restart: Callable[[str, BaseException | None], None] | None = None,
        on_loop_health: Callable[[str, bool], None] | None = None,
        check=None,
        on_event: Callable[[object], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.topic = kafka.topics.name("model_versions")
        self.model_name = model_name
        self.loader = loader
        self.repository = repository
        self.aliases = (PRODUCTION, CANARY) if follow_canary else (PRODUCTION,)
        self._on_loaded = on_loaded
        self._on_failure = on_failure
        self._on_load_seconds = on_load_seconds
        self._latest = None  # newest ModelVersionEvent for our model
        # AnnouncementCheck: records are cross-checked with the registry before anything is swapped.
        self._check = check
        self._on_event = on_event  # every record of our model that is taken (e.g. gate decisions, for deltas)
        self._failed: set[int] = set()
        self._stop = threading.Event()
        self.supervisor = SupervisedThread("model-watcher", self._run, self._stop,
                                           on_restart=on_loop_restart, on_health=on_loop_health)

    def start(self) -> "ModelVersionWatcher":
        self.supervisor.start()
        return self

    def stop(self) -> None:
        self.supervisor.stop(15)

    def _run(self) -> None:
        from streamrec_proto.v1 import registry_pb2

        reader = self._connect()
        if reader is None:
            return
        logger.info("watching model versions", extra={"topic": self.topic, "model": self.model_name})
        refreshed = time.monotonic()
        try:  # anything unexpected propagates to the supervisor, which restarts the loop
            while not self._stop.is_set():
                for records in reader.read(timeout_ms=200).values():
                    for rec in records:
                        self._take(rec, registry_pb2)
                self._reconcile()
                if time.monotonic() - refreshed >= PARTITION_REFRESH_S:
                    refreshed = time.monotonic()
                    reader.refresh_partitions()
        finally:
            reader.close()

    def _connect(self) -> PartitionReader | None:
        """The whole topic from its log start, retried until Kafka answers or the watcher stops."""
        while not self._stop.is_set():
            reader = None
            try:
                reader = PartitionReader(self.kafka, self.topic, max_poll_records=500)
                reader.assign()
                return reader
            except KafkaException as exc:
                logger.warning("model-versions consumer cannot start; retrying", extra={"error": str(exc)})
                if reader is not None:
                    reader.close()
                self._stop.wait(1.0)
        return None

    def _take(self, rec, registry_pb2) -> None:
        key, value = rec.key(), rec.value()
        if key is not None and key.decode("utf-8", "replace") != self.model_name:
            return
        if value is None:
            return  # tombstone
        event = registry_pb2.ModelVersionEvent()
        try:
            event.ParseFromString(value)
        except Exception:  # noqa: BLE001
            logger.warning("skipping unparsable model-versions record", extra={"offset": rec.offset()})
            return
        if event.model_name != self.model_name:
            return
        # With a registry check a record only prompts a look (a forged huge sequence must not pin us).
        if self._check is None and self._latest is not None and event.sequence and event.sequence < self._latest.sequence:
            return  # a stale replay
        if event.version in self._failed and event.action not in ("registered",):
            # Named again (promotion, alias set): give it another try.
            self._failed.discard(event.version)
        self._latest = event
        if self._on_event is not None:
            self._on_event(event)

    def _reconcile(self) -> None:
        event = self._latest
        if event is None:
            return
        targets = self._check.targets(event, self.aliases) if self._check is not None else event.aliases
        if targets is None:
            return  # the registry cannot be asked right now: keep serving, check again later
        for alias in self.aliases:
            wanted = int(targets.get(alias, 0))
            current = self.repository.get(alias)
            if wanted == 0:
                if current is not None and alias != PRODUCTION:
                    self.repository.swap(alias, None)
                continue
            if current is not None and current.version == wanted:
                continue
            if alias != PRODUCTION:
                prod = self.repository.get(PRODUCTION)
                if prod is not None and prod.version == wanted:
                    self.repository.swap(alias, None)  # the canary was promoted: nothing separate to serve
                    continue
            if wanted in self._failed or self._stop.is_set():
                continue
            self._load(alias, wanted)

    def _load(self, alias: str, version: int) -> None:
        start = time.perf_counter()
        try:
            model = self.loader.load(self.model_name, version)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old version serving
            self._failed.add(version)
            current = self.repository.get(alias)
            logger.error("model version failed to load; keeping the current one",
                         extra={"model": self.model_name, "model_version": version, "alias": alias,
                                "serving": current.version if current else None, "error": f"{type(exc).__name__}: {exc}"})
            if self._on_failure:
                self._on_failure(alias, version, exc)
            return
        if self._on_load_seconds:
            self._on_load_seconds(time.perf_counter() - start)
        if self._on_loaded:
            self._on_loaded(alias, model)  # e.g. merge its history snapshot before it serves
        old = self.repository.swap(alias, model)
        logger.info("model swapped in", extra={"model": self.model_name, "alias": alias, "model_version": version,
                                               "previous": old.version if old else None})
