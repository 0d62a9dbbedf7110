"""The trainer's main loop: restore, consume, train, checkpoint, export and register.

One iteration: read whatever `items` has (so new items get their text embedding before events refer to
them), read a micro-batch of `events`, test-then-train it, advance the in-memory offsets. Every
``checkpoint_interval_s`` the state is checkpointed together with those offsets; every
``export_interval_s`` (or ``export_every_events``) it is checkpointed, evaluated, exported and
registered (judged and registered on a publisher thread when ``publish_mode`` says so, see
services/trainer/publisher.py). The loop runs only while this replica is the leader; a leader that
loses its lease stops at once, throws its unsaved work away and goes back to standby (the next leader
restores the last checkpoint and re-trains the events after it).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry

from recmodel.delta import DeltaBase
from recmodel.evaluate.prequential import PrequentialEvaluator
from services.common.entrypoint import ServiceThread
from services.common.kafka import ensure_topics
from services.common.metrics import MetricsServer
from services.common.process import freeze_heap
from services.common.registry_client import RegistryClient
from services.trainer.backend import LocalBackend, TrainingBackend, make_text_encoder, resolve_device
from services.trainer.checkpoint_store import CheckpointStore, Registration, StreamPosition
from services.trainer.config import TrainerConfig
from services.trainer.deltas import DeltaShipper
from services.trainer.elector import build_elector
from services.trainer.holdout import ChampionChallenger, HoldoutBuffer
from services.trainer.metrics import TrainerMetrics
from services.trainer.exporter import VersionExporter
from services.trainer.publisher import Publisher
from services.trainer.stream import EventReader, ItemReader

logger = logging.getLogger(__name__)

# How often the trainer asks for the end of `events`: the lag metric, and the lag that bounds its steps
# (catch_up_users), which follows a stream's swings within this much.
LAG_REFRESH_S = 0.5
PARTITION_REFRESH_S = 30.0


def export_pause_s(interval_s: float, publish_s: float, saturated: bool, share: float) -> float:
    """Seconds from the end of one export to the next: ``interval_s``, stretched while the trainer is saturated
    so that publishing (``publish_s`` of the training thread each time) takes at most ``share`` of it."""
    if not saturated or share >= 1 or publish_s <= 0:
        return interval_s
    return max(interval_s, publish_s * (1 - share) / share)


def step_events(polled: int, batch_size: int, catch_up_batch_size: int, behind: bool) -> int | None:
    """Events per optimisation step for a micro-batch of ``polled`` events (None: the model's batch_size).

    Behind the stream: catch_up_batch_size. Otherwise one step for the whole micro-batch, from batch_size up to
    catch_up_batch_size: a poll holds what arrived during the previous step, so on a slow stream steps stay at
    most batch_size, and on a fast one they grow with it instead of falling behind. (A step costs about its
    distinct users, not its events: at 1,000 events/s on 2 cores, steps of 256 trained 200-250 events/s in the
    stack, so the trainer fell 2,000 records behind within 2-3 s of catching up.) 0 turns both off."""
    if not catch_up_batch_size:
        return None
    if behind:
        return catch_up_batch_size
    return min(max(batch_size, polled), catch_up_batch_size)


CATCH_UP_MIN_USERS = 8


def catch_up_users(max_users: int, catch_up_lag: int, lag: int) -> int | None:
    """Users trained per step at ``lag`` records behind (None: no bound): ``max_users`` at ``catch_up_lag``, and
    fewer in proportion as the lag grows, down to CATCH_UP_MIN_USERS. The lag settles where the trainer's rate
    matches the stream's, training as many users as that allows. 0 turns the bound off."""
    if not max_users:
        return None
    return max(min(CATCH_UP_MIN_USERS, max_users), max_users * catch_up_lag // max(lag, catch_up_lag))


FULL_RATE_MAX_AGE_S = 60.0


class CatchUpPace:
    """Whether the trainer must bound its steps (:func:`catch_up_users`): while the stream arrives faster than the
    trainer consumes it training every user. That rate is measured over each lag refresh interval the trainer
    spends behind from start to end (so busy) and unbounded. A backlog with nothing faster behind it, a restart
    or a backfill of an existing topic, is trained in full.

    The bound holds once the trainer has caught up, too, for as long as the measurement says the stream outpaces
    full training: a trainer that went back to training every user would only fall behind again within a step
    or two, and an event arriving meanwhile would wait for that backlog. (At 1,000 events/s on 2 cores, steps that
    trained every user took 1-1.5 s for 300-500 events, and the lag swung between 500 and 3,000 records.)

    A measured rate is used for ``max_age_s``; then the trainer trains every user again until it has measured
    the rate anew. A bounded trainer cannot measure it, so without an age a rate from a busier moment (the
    stack's start measured 292 events/s, against ~950 later) would bound every later spell behind the stream."""

    def __init__(self, max_age_s: float = FULL_RATE_MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self.full_rate: float | None = None  # records/s consumed behind the stream, every user trained
        self.arrival_rate: float | None = None  # records/s arriving on `events`
        self._measured_at = 0.0
        self._last: tuple[float, int, int, bool, bool] | None = None  # time, consumed, end, behind, bounded

    def update(self, now: float, consumed: int, lag: int, behind: bool) -> bool:
        """Records consumed so far and the lag behind the end of `events` at ``now``; -> whether to bound."""
        end = consumed + lag
        if self._last is not None and now > self._last[0] and consumed >= self._last[1]:
            t0, consumed0, end0, was_behind, was_bounded = self._last
            self.arrival_rate = (end - end0) / (now - t0)
            if was_behind and behind and not was_bounded:  # busy throughout, training every user
                self.full_rate = (consumed - consumed0) / (now - t0)
                self._measured_at = now
        if self.full_rate is not None and now - self._measured_at > self.max_age_s:
            self.full_rate = None  # too old: train every user until it is measured again
        bounded = self.full_rate is not None and self.arrival_rate is not None and self.arrival_rate > self.full_rate
        self._last = (now, consumed, end, behind, bounded)
        return bounded


__all__ = ["LostLeadership", "TrainerService", "make_text_encoder"]  # make_text_encoder: for the distributed ranks


class LostLeadership(Exception):
    """The lease is gone: stop training without touching the checkpoint."""


class TrainerService:
    def __init__(self, config: TrainerConfig, metrics: TrainerMetrics, elector, *,
                 registry_client: RegistryClient | None = None, backend: TrainingBackend | None = None) -> None:
        self.config = config
        self.cfg = config.trainer
        self.metrics = metrics
        self.elector = elector
        self.backend = backend or LocalBackend(config, resolve_device(self.cfg.device))
        self.device = self.backend.device
        mode = self.cfg.publish_mode
        self.publish_in_background = mode == "background" or (mode == "auto" and self.device.type == "cuda")
        self.store = CheckpointStore(self.cfg.checkpoint_dir)
        self.client = registry_client or RegistryClient(self.cfg.registry_target, timeout_s=self.cfg.registry_timeout_s,
                                                        tls=config.tls)
        self.trainer_id = self.cfg.trainer_id or getattr(elector, "identity", "trainer")
        self._replayed_unexported = 0  # idle replay steps the registered version does not have yet
        self._heap_frozen_after_publish = False
        self._step_users: int | None = None  # catch_up_users(...) while the stream outpaces full training, else None
        self._pace = CatchUpPace()
        self._behind = False  # more than catch_up_lag behind the end of `events` (see _refresh_lag)
        self._lag: int | None = None  # records behind the end of `events` at the last refresh
        self.exporter = VersionExporter(self.client, model_name=self.cfg.model_name, trainer_id=self.trainer_id,
                                          auto_promote=self.cfg.auto_promote, exports_dir=self.store.exports_dir,
                                          keep_exports=self.cfg.keep_exports)
        self.champion = ChampionChallenger(
            self.client, self.cfg.model_name, metrics=metrics, k=self.cfg.gate.k, confidence=self.cfg.gate.confidence,
            cache_versions=self.cfg.gate.cache_versions, download_dir=Path(self.cfg.checkpoint_dir) / "gate",
            buffer=HoldoutBuffer(self.cfg.gate.holdout_events, max_history=max(50, self.cfg.model.max_len)),
            # Beside training, one scoring thread leaves the other cores to it.
            scoring_threads=1 if self.publish_in_background else 0)
        self.events_topic = config.kafka.topics.name("events")
        self.items_topic = config.kafka.topics.name("items")
        self._restored = threading.Event()
        self._standing_by = threading.Event()
        self.position: StreamPosition | None = None
        self.registration: Registration | None = None
        self.publisher = Publisher(background=False)  # replaced by each lead's own (_lead)
        self.deltas = self._delta_shipper(interval_s=0)  # replaced by each lead's own (_lead)
        self._stop = threading.Event()
        self._thread = ServiceThread("trainer", self._run_until_stopped)

    @classmethod
    def from_config(cls, config: TrainerConfig, *, backend: TrainingBackend | None = None) -> "TrainerService":
        """The service as the ``streamrec trainer`` process (or rank 0 of a data-parallel trainer) runs it:
        its own metrics, elector and metrics server; ``backend`` defaults to training in this process."""
        metrics = TrainerMetrics(CollectorRegistry())
        service = cls(config, metrics, build_elector(config, metrics), backend=backend)
        if config.metrics.enabled:
            service._thread.metrics_server = MetricsServer(metrics.registry, config.metrics.host, config.metrics.port,
                                                           ready=service.ready)
        return service

    # ------------------------------------------------------------------ lifecycle (run_service)
    def start(self) -> "TrainerService":
        """Serve metrics (``from_config``) and train on a thread of its own until ``stop()``."""
        self._thread.start()
        return self

    def _run_until_stopped(self) -> None:
        if self.config.kafka.topics.create:
            ensure_topics(self.config.kafka, [self.events_topic, self.items_topic])
        self.run(self._stop)

    def stop(self) -> None:
        self._stop.set()

    def wait(self) -> int:
        self._thread.join()
        return 0

    # ------------------------------------------------------------------ probes
    def ready(self) -> bool:
        """Restored and assigned (the leader), or healthy and waiting (a standby); not while the
        lease elector's loop keeps dying (it could never lead)."""
        return (self._restored.is_set() or self._standing_by.is_set()) and getattr(self.elector, "healthy", True)

    # ------------------------------------------------------------------ outer loop
    def run(self, stop: threading.Event) -> None:
        self.elector.start()
        try:
            while not stop.is_set():
                self._standing_by.set()
                if not self.elector.wait_for_leadership(stop):
                    break
                self._standing_by.clear()
                self.metrics.is_leader.set(1)
                try:
                    self._lead(stop)
                except LostLeadership:
                    logger.warning("lost the lease: stopped training, unsaved work discarded")
                finally:
                    self.metrics.is_leader.set(0)
                    self._restored.clear()
        finally:
            self.elector.stop(release=True)
            self.client.close()

    def _check_leader(self) -> None:
        if not self.elector.is_leader():
            raise LostLeadership()

    # ------------------------------------------------------------------ leading
    def _lead(self, stop: threading.Event) -> None:
        cfg = self.cfg
        position = self.backend.restore(self.store)
        trainer = self.backend.trainer
        if position is None or position.events_topic != self.events_topic:
            position = StreamPosition(events_topic=self.events_topic, items_topic=self.items_topic)
        if position.items_topic != self.items_topic:
            position.items_offsets = {}
        position.epoch = int(getattr(self.elector, "epoch", 0))
        self.position = position
        self._pace = CatchUpPace()  # rates are measured afresh from the restored position
        self._lag = None
        self.registration = self.store.load_registration()
        logger.info("restored", extra={"events_trained": trainer.events_trained, "offsets": position.events_offsets,
                                        "checkpoint": self.store.exists(), "device": str(self.device)})
        self.metrics.events_trained.inc(trainer.events_trained - self._counted())
        self._counted_events = trainer.events_trained
        self._checkpointed_events = trainer.events_trained if self.store.exists() else None
        self._checkpointed_items = dict(position.items_offsets)

        self._warn_if_behind_registry(position)

        monitor = PrequentialEvaluator(window=cfg.eval_window, ks=cfg.eval_k, per_batch=cfg.eval_per_batch,
                                       max_history=max(50, trainer.max_len),
                                       time_share=None if cfg.eval_time_share >= 1 else cfg.eval_time_share)
        events = EventReader(self.config.kafka, self.events_topic, group_id=cfg.consumer_group,
                             max_poll_records=cfg.poll_max_records)
        items = ItemReader(self.config.kafka, self.items_topic, group_id=cfg.consumer_group, max_poll_records=5000)
        self.publisher = Publisher(background=self.publish_in_background)
        self.deltas = self._delta_shipper(cfg.delta_interval_s)
        try:
            events.assign(position.events_offsets)
            items.assign(position.items_offsets)
            position.events_offsets = dict(events.positions)
            # Catch the catalog up before the first events (new items need their text vectors).
            self._upsert(items.read_to_end(cfg.items_sync_timeout_s), items)
            self._restored.set()
            self._loop(stop, trainer, position, monitor, events, items)
        finally:
            self.publisher.close()  # a publication in flight when leadership is lost is not applied
            self.deltas.close()
            events.close()
            items.close()
            self.backend.close()

    def _delta_shipper(self, interval_s: float) -> DeltaShipper:
        return DeltaShipper(self.client, self.metrics, model_name=self.cfg.model_name, trainer_id=self.trainer_id,
                            interval_s=interval_s, max_bytes=self.cfg.delta_max_bytes, max_lag=self.cfg.delta_max_lag)

    def _warn_if_behind_registry(self, position: StreamPosition) -> None:
        """A checkpoint behind an already registered version means replicas do not share checkpoint_dir."""
        try:
            versions = self.client.list_versions(self.cfg.model_name)
        except Exception:  # noqa: BLE001 - the registry may be starting; this is only a consistency warning
            return
        for v in versions:
            ahead = [o for o in v.training_offsets if o.topic == self.events_topic
                     and o.offset > position.events_offsets.get(o.partition, 0)]
            if ahead and v.trainer_id != self.trainer_id:
                logger.error("checkpoint is behind a version another trainer registered: is checkpoint_dir on "
                             "storage shared by every replica?", extra={"model_version": v.version,
                                                                         "registered_by": v.trainer_id})
                return

    def _counted(self) -> int:
        return getattr(self, "_counted_events", 0)

    def _upsert(self, new_items, reader: ItemReader) -> None:
        if new_items:
            self.backend.upsert_items(new_items)
            self.metrics.items_upserted.inc(len(new_items))
        self.position.items_offsets = dict(reader.positions)

    def _loop(self, stop, trainer, position, monitor, events: EventReader, items: ItemReader) -> None:
        cfg = self.cfg
        now = time.monotonic()
        last_checkpoint = now
        last_export = now
        last_lag = 0.0
        last_partitions = now
        exported_at_events = trainer.events_trained
        publish_s = 0.0
        reached_end = True  # since the last export the trainer found the stream's end at least once
        loss = float("nan")
        idle_budget = 0  # replay steps left until new events arrive
        while not stop.is_set():
            self._check_leader()
            now = time.monotonic()
            if now - last_lag >= LAG_REFRESH_S:
                self._refresh_lag(events, position)
                last_lag = now
            self._upsert(items.read_available(0), items)
            self._collect_publication()
            self.deltas.collect()
            batch = events.next_batch(cfg.poll_timeout_ms)
            if batch is not None:
                loss = self._train_batch(trainer, position, monitor, events, items, batch, loss)
                if batch.events:
                    idle_budget = int(cfg.idle_replay_epochs * trainer.replay_epoch_steps())
            if batch is None or batch.records < cfg.poll_max_records:
                reached_end = True  # a poll took all there was: the trainer keeps up with the stream
            if (batch is None or not batch.events) and idle_budget > 0:
                idle_budget -= self._replay_idle(min(cfg.idle_replay_steps, idle_budget))
            now = time.monotonic()
            if now - last_partitions >= PARTITION_REFRESH_S:
                events.refresh_partitions()
                items.refresh_partitions()
                last_partitions = now
            pending = not self.publisher.busy and self._pending_registration(trainer, position)
            # Saturated: far behind, or every poll since the last export came back full.
            saturated = self._behind or not reached_end
            pause = export_pause_s(cfg.export_interval_s, publish_s, saturated, cfg.catch_up_publish_share)
            export_due = pending and (
                now - last_export >= pause
                or (cfg.export_every_events and trainer.events_trained - exported_at_events >= cfg.export_every_events))
            if export_due:
                started = time.monotonic()
                self._checkpoint(trainer, position, events)
                last_checkpoint = time.monotonic()
                self._export(trainer, position, monitor)
                last_export = time.monotonic()
                publish_s = last_export - started  # what this version took from training (all of it when inline)
                reached_end = False
                exported_at_events = trainer.events_trained
            elif now - last_checkpoint >= cfg.checkpoint_interval_s and self._dirty(trainer):
                self._checkpoint(trainer, position, events)
                last_checkpoint = time.monotonic()
            elif self.deltas.due(now, trainer.steps, self._lag):
                self._check_leader()
                self.deltas.ship(trainer, {self.events_topic: dict(position.events_offsets)}, position.newest_event_ms)
        # Graceful stop: let the publication in flight finish, and keep what was trained.
        self._collect_publication(wait=True)
        if self.elector.is_leader() and self._dirty(trainer):
            self._checkpoint(trainer, position, events)

    # ------------------------------------------------------------------ pieces
    def _train_batch(self, trainer, position, monitor, events: EventReader, items: ItemReader, batch,
                     loss: float) -> float:
        """Test-then-train one micro-batch and move the position past it; -> the loss to report."""
        if any(e.item_id not in trainer.vocab for e in batch.events):
            # Unknown items: the catalog record may be just behind; read `items` up to its end first.
            self._upsert(items.read_to_end(self.cfg.items_sync_timeout_s), items)
        self._check_leader()
        start = time.perf_counter()
        if batch.events:
            self.champion.observe(trainer, batch.events)
            # Behind: larger micro-batches (one window per user) and fewer prequential predictions in each.
            behind = self._behind
            monitor.observe_and_test(trainer, batch.events, (self.cfg.catch_up_eval_per_batch or None) if behind else None)
            size = step_events(len(batch.events), self.cfg.model.batch_size, self.cfg.catch_up_batch_size, behind)
            stats = self.backend.train_events(batch.events, size, self._step_users)
            loss = stats.loss
            self.metrics.users_shed.inc(stats.users_shed)
        events.advance_past(batch)
        position.events_offsets = dict(events.positions)
        position.records_consumed += batch.records
        position.events_skipped += batch.skipped
        position.newest_event_ms = max(position.newest_event_ms, batch.newest_ms)
        self._after_batch(trainer, batch, loss, time.perf_counter() - start)
        return loss

    def _replay_idle(self, steps: int) -> int:
        """Caught up: spend idle compute on more passes over the replay buffer (bounded), so the served
        model approaches offline quality instead of staying at one-pass quality; -> steps spent."""
        stats = self.backend.replay(steps)
        self._replayed_unexported += stats.steps
        self.metrics.replay_steps.inc(stats.steps)
        if stats.loss == stats.loss:
            self.metrics.loss.set(stats.loss)
        return steps

    def _after_batch(self, trainer, batch, loss: float, seconds: float) -> None:
        m = self.metrics
        m.events_trained.inc(trainer.events_trained - self._counted())
        self._counted_events = trainer.events_trained
        m.events_skipped.inc(batch.skipped)
        if loss == loss:
            m.loss.set(loss)
        m.batch_duration.observe(seconds)
        if self.position.newest_event_ms:
            m.freshness.set(max(0.0, time.time() - self.position.newest_event_ms / 1000.0))
        if self.device.type == "cuda":
            m.gpu_memory.set(torch.cuda.memory_allocated(self.device))

    def _refresh_lag(self, events: EventReader, position: StreamPosition) -> None:
        """Lag per partition for the metrics, and whether the trainer is far enough behind to catch up."""
        try:
            lags = events.lag()
        except Exception as exc:  # noqa: BLE001 - lag is for display and batch sizing; never stop training for it
            logger.debug("lag refresh failed", extra={"error": str(exc)})
        else:
            for p, lag in lags.items():
                self.metrics.consumer_lag.labels(topic=self.events_topic, partition=str(p)).set(lag)
            lag = sum(lags.values())
            self._lag = lag
            was_behind, self._behind = self._behind, lag > self.cfg.catch_up_lag
            bounded = self._pace.update(time.monotonic(), position.records_consumed, lag, self._behind)
            step_users = catch_up_users(self.cfg.catch_up_max_users, self.cfg.catch_up_lag, lag) if bounded else None
            if self._behind != was_behind or (step_users is None) != (self._step_users is None):
                if not self._behind:
                    message = ("caught up: micro-batches of a bounded number of users (the stream outpaces full training)"
                               if step_users else "caught up: usual micro-batches")
                elif step_users:
                    message = "catching up: larger micro-batches of a bounded number of users (the stream outpaces full training)"
                else:
                    message = "catching up: larger micro-batches"
                logger.info(message, extra={"lag": lag, "max_users_per_step": step_users,
                                            "arrival_per_s": self._pace.arrival_rate,
                                            "full_training_per_s": self._pace.full_rate})
            self._step_users = step_users
            self.metrics.catching_up.set(1 if self._behind else 0)
            self.metrics.catch_up_users.set(step_users or 0)
        if position.newest_event_ms:
            self.metrics.freshness.set(max(0.0, time.time() - position.newest_event_ms / 1000.0))

    def _dirty(self, trainer) -> bool:
        return trainer.events_trained != getattr(self, "_checkpointed_events", None) or \
            trainer.steps != getattr(self, "_checkpointed_steps", None) or \
            self.position.items_offsets != getattr(self, "_checkpointed_items", None)

    def _checkpoint(self, trainer, position: StreamPosition, events: EventReader) -> None:
        self._check_leader()  # never overwrite a newer leader's checkpoint
        start = time.perf_counter()
        self.store.save(trainer, position)
        self._checkpointed_events = trainer.events_trained
        self._checkpointed_steps = trainer.steps
        self._checkpointed_items = dict(position.items_offsets)
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_duration.observe(time.perf_counter() - start)
        events.commit()  # lag visibility only, after the state is durable
        logger.debug("checkpoint", extra={"events_trained": trainer.events_trained, "offsets": position.events_offsets})

    def _pending_registration(self, trainer, position: StreamPosition) -> bool:
        if trainer.events_trained == 0:
            return False
        reg = self.registration
        return (reg is None or reg.events_offsets != position.events_offsets
                or reg.items_offsets != position.items_offsets or self._replayed_unexported > 0)

    def _stage_timer(self):
        """A function that records the time since its last call (or its creation) under the stage it names."""
        last = [time.perf_counter()]

        def stage(name: str) -> None:
            now = time.perf_counter()
            self.metrics.export_stage_duration.labels(stage=name).observe(now - last[0])
            last[0] = now

        return stage

    def _export(self, trainer, position: StreamPosition, monitor: PrequentialEvaluator) -> None:
        """Write the artifact from the trainer's state (this thread), then judge and register it (the
        publisher's thread, see services/trainer/publisher.py); ``_collect_publication`` applies the outcome."""
        start = time.perf_counter()
        stage = self._stage_timer()
        metrics = monitor.metrics()
        for k in self.cfg.eval_k:
            self.metrics.prequential_hit_rate.labels(k=str(k)).set(metrics[f"hr@{k}"])
        metrics.update(events_trained=float(trainer.events_trained),
                       newest_event_ms=float(position.newest_event_ms))
        offsets = dict(position.events_offsets)
        stage("evaluate")
        try:
            artifact = self.exporter.export(trainer, self.events_topic, offsets, metrics)
        except Exception as exc:
            self.metrics.registration_failures.inc()
            logger.warning("export failed; will retry at the next interval", extra={"error": str(exc)}, exc_info=True)
            return
        stage("write")
        try:
            delta_base = self.deltas.base_of(artifact)
        except Exception as exc:  # noqa: BLE001 - deltas wait for the next version; this one is published
            logger.warning("cannot read the export back for weight deltas", extra={"error": str(exc)})
            delta_base = None
        # What the registration will record: the state as exported, whatever is trained meanwhile.
        snapshot = _Published(version=0, offsets=offsets, events_trained=trainer.events_trained,
                              items_offsets=dict(position.items_offsets), replayed=self._replayed_unexported,
                              started=start, steps=trainer.steps, delta_base=delta_base)
        parent = self.registration.version if self.registration else 0
        queries = self.champion.buffer.queries()  # the holdout as of this export; the buffer moves on
        self.publisher.submit(lambda: self._publish(artifact, parent, queries, snapshot, stage))

    def _publish(self, artifact: Path, parent: int, queries, snapshot: "_Published", stage) -> "_Published":
        """The publisher's thread: the gate's evidence, then registration. Reads nothing the training thread
        changes (the artifact on disk, the holdout queries taken at export, the champion's own cache)."""
        candidate = self.champion.judge(artifact, queries)  # adds the gate's paired evidence to the manifest
        stage("judge")
        self._check_leader()
        version = self.exporter.register(artifact, parent_version=parent)
        stage("register")
        self.champion.remember(version, candidate)
        return replace(snapshot, version=version)

    def _collect_publication(self, wait: bool = False) -> None:
        """Apply a finished publication: the registration, its record next to the checkpoint, the metrics."""
        future = self.publisher.collect(wait=wait)
        if future is None:
            return
        exc = future.exception()
        if isinstance(exc, LostLeadership):
            raise exc
        if exc is not None:
            self.metrics.registration_failures.inc()
            logger.warning("export/register failed; will retry at the next interval", extra={"error": str(exc)},
                           exc_info=(type(exc), exc, exc.__traceback__) if not hasattr(exc, "code") else None)
            return
        done: _Published = future.result()
        self.registration = Registration(done.version, done.offsets, done.events_trained, done.items_offsets)
        self._replayed_unexported = max(0, self._replayed_unexported - done.replayed)
        self.store.save_registration(self.registration)
        self.deltas.registered(done.version, done.delta_base, done.steps)
        self.metrics.versions_registered.inc()
        self.metrics.registered_version.set(done.version)
        seconds = time.perf_counter() - done.started
        self.metrics.export_duration.observe(seconds)
        logger.info("registered model version", extra={"model_version": done.version, "offsets": done.offsets,
                                                       "events_trained": done.events_trained,
                                                       "seconds": round(seconds, 2)})
        if not self._heap_frozen_after_publish:
            # The first version imported what only exporting and judging use (torch.onnx with dynamo and
            # sympy, scipy: 250,000 objects, 150-370 ms per full collection on the loaded 2-core machine):
            # out of the collector's full passes too, as the start-up heap (``run_service``).
            self._heap_frozen_after_publish = True
            freeze_heap()


@dataclass(frozen=True)
class _Published:
    """A version being published: the state it was exported from, and (once registered) its number."""

    version: int
    offsets: dict[int, int]
    events_trained: int
    items_offsets: dict[int, int]
    replayed: int  # idle replay steps the exported state includes
    started: float  # perf_counter at the start of the export
    steps: int = 0  # the trainer's steps at the export
    delta_base: DeltaBase | None = None  # what weight deltas of this version are computed against
