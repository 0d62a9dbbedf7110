"""InferenceService: one inference process wired up (repository, histories, watcher, data plane, gRPC, metrics)."""

from __future__ import annotations

import logging
import os
import time
from prometheus_client import CollectorRegistry

from services.common.grpc import GrpcEndpoint, GrpcServer
from services.common.kafka import ensure_topics
from services.common.metrics import MetricsServer
from services.inference.announcements import AnnouncementCheck
from services.inference.batcher import EncoderBatcher
from services.inference.config import InferenceConfig
from services.inference.dataplane import RecommenderDataPlane
from services.inference.deltas import DeltaFollower
from services.inference.histories import HistoryFollower, PopularityTracker, UserHistoryStore, freshness_seconds
from services.inference.loader import DirectorySource, ModelLoader, RegistrySource
from services.inference.metrics import InferenceMetrics
from services.inference.served_model import ServedModel
from services.inference.repository import PRODUCTION, ModelRepository
from services.inference.retrieval import set_search_threads
from services.inference.servicer import RecommenderServicer
from services.inference.watcher import ModelVersionWatcher

logger = logging.getLogger(__name__)


class InferenceService(GrpcEndpoint):
    def __init__(self, config: InferenceConfig, registry: CollectorRegistry | None = None, *,
                 reuse_port: bool = False, metrics_port: int | None = None) -> None:
        self.config = config
        s = config.inference
        self.registry = registry or CollectorRegistry()
        self.metrics = InferenceMetrics(self.registry)
        set_search_threads(s.index.search_threads)
        self.repository = ModelRepository(canary_share=s.canary_share)
        self.histories = UserHistoryStore(s.history_length, s.max_users, PopularityTracker(s.popularity_half_life_s))
        # Background loops that keep failing make the server NOT_SERVING (names of those loops).
        self._failing_loops: set[str] = set()
        self.follower = HistoryFollower(config.kafka, self.histories, on_lag=self._on_lag,
                                        on_applied=self.metrics.history_events.inc,
                                        on_loop_restart=self._on_loop_restart,
                                        on_loop_health=self._on_loop_health) if s.follow_events else None
        source = DirectorySource(s.artifact_source) if s.artifact_source else RegistrySource(s.registry_target, s.registry_timeout_s, tls=config.tls)
        self.source = source
        self.loader = ModelLoader(source, s.cache_dir, index_config=s.index, warmup_requests=s.warmup_requests,
                                  encoder_threads=s.encoder_threads)
        self.batcher = (EncoderBatcher(s.batching.max_batch, s.batching.max_wait_ms / 1000.0, self.metrics.batch_size.observe,
                                       on_loop_restart=self._on_loop_restart, on_loop_health=self._on_loop_health)
                        if s.batching.max_batch > 1 else None)
        self.dataplane = RecommenderDataPlane(self.repository, self.histories, s, self.batcher,
                                              on_cold_start=self.metrics.cold_start.inc,
                                              on_cache_lookup=self._count_cache_lookup)
        self.deltas = None
        if s.delta_poll_s > 0 and isinstance(source, RegistrySource):
            from recmodel.serving import serving_session_options

            self.deltas = DeltaFollower(
                source.client.download_delta, s.model_name, self.repository, poll_s=s.delta_poll_s,
                warmup_requests=s.warmup_requests, session_options=lambda: serving_session_options(s.encoder_threads),
                on_applied=self._delta_applied, on_failure=self.metrics.delta_failures.inc,
                on_loop_restart=self._on_loop_restart, on_loop_health=self._on_loop_health,
                is_rejected=lambda model, v: source.client.get_version(model, v).gate_decision == "rejected")
        self.watcher = ModelVersionWatcher(
            config.kafka, s.model_name, self.loader, self.repository, follow_canary=s.canary_share > 0,
            on_loaded=self._before_swap, on_failure=lambda *_: self.metrics.model_load_failures.inc(),
            on_load_seconds=self.metrics.model_load_duration.observe,
            on_loop_restart=self._on_loop_restart, on_loop_health=self._on_loop_health,
            check=(AnnouncementCheck(source.client.get_alias, on_mismatch=self.metrics.announcement_mismatches.inc)
                   if isinstance(source, RegistrySource) else None),
            on_event=self.deltas.note_announcement if self.deltas else None)
        g = config.grpc
        self.grpc = GrpcServer(g.host, g.port, g.max_workers, g.max_message_bytes, observe=self.metrics.observe_request,
                               reuse_port=reuse_port, tls=config.tls, max_concurrent_rpcs=g.max_concurrent_rpcs,
                               default_deadline_s=g.default_deadline_s)
        RecommenderServicer(self.dataplane).register(self.grpc)
        self.repository.on_change(self._after_swap)
        self.metrics_server = None
        if config.metrics.enabled:
            port = config.metrics.port if metrics_port is None else metrics_port
            self.metrics_server = MetricsServer(self.registry, config.metrics.host, port, ready=self._serving)
            self.metrics.history_freshness.set_function(lambda: freshness_seconds(self.histories))
        self.metrics.model_ready.set(0)
        loops = (["model-watcher"] + (["history-follower"] if self.follower else []) + (["encoder-batcher"] if self.batcher else [])
                 + (["delta-follower"] if self.deltas else []))
        for loop in loops:
            self.metrics.loop_restarts.labels(loop)  # present (at 0) before the first restart
            self.metrics.loop_healthy.labels(loop).set(1)
        self._stopping = False

    def _count_cache_lookup(self, cache: str, hit: bool) -> None:
        self.metrics.cache_lookups.labels(cache, "hit" if hit else "miss").inc()

    # ------------------------------------------------------------------ model swaps
    def _before_swap(self, alias: str, model: ServedModel) -> None:
        """Bring user histories up to the new model's snapshot before it answers anything."""
        events_topic = self.config.kafka.topics.name("events")
        offsets = model.offsets_for(events_topic)
        if self.follower is None:
            self.histories.merge_snapshot(model.history_snapshot)
            return
        if not self.follower.running:  # first model: the store starts from its snapshot
            self.histories.merge_snapshot(model.history_snapshot, only_newer=False)
            self.histories.seed_popularity(model.history_snapshot)
            self.follower.start_from(offsets)
            return
        # The store is normally ahead of any snapshot; only partitions where the snapshot is ahead move.
        ahead = self.follower.ahead_partitions(offsets)
        taken = self.histories.merge_snapshot(model.history_snapshot, only_newer=True)
        if ahead:
            self.follower.start_from(ahead)
        logger.info("histories merged with new snapshot", extra={"model_version": model.version, "users_taken": taken,
                                                                 "partitions_moved": sorted(ahead)})

    def _delta_applied(self, seconds: float) -> None:
        self.metrics.deltas_applied.inc()
        self.metrics.delta_apply_duration.observe(seconds)

    def _after_swap(self, alias: str, model: ServedModel | None) -> None:
        self.metrics.model_version.labels(self.config.inference.model_name, alias).set(model.version if model else 0)
        self.metrics.model_delta.labels(self.config.inference.model_name, alias).set(model.delta if model else 0)
        if alias == PRODUCTION:
            self.metrics.index_items.set(len(model.item_ids) if model else 0)
            self.metrics.model_ready.set(1 if model is not None else 0)
            if not self._stopping:
                self.grpc.set_serving(self._serving())

    # ------------------------------------------------------------------ supervised loops
    def _serving(self) -> bool:
        """A warmed-up production model, and no background loop that keeps failing."""
        return self.repository.ready and not self._failing_loops

    def _on_loop_restart(self, loop: str, error: BaseException | None) -> None:
        self.metrics.loop_restarts.labels(loop).inc()

    def _on_loop_health(self, loop: str, healthy: bool) -> None:
        self.metrics.loop_healthy.labels(loop).set(1 if healthy else 0)
        (self._failing_loops.discard if healthy else self._failing_loops.add)(loop)
        if not self._stopping:
            self.grpc.set_serving(self._serving())

    def _on_lag(self, lag: dict[int, int]) -> None:
        for p, n in lag.items():
            self.metrics.history_lag.labels(str(p)).set(n)
        self.metrics.history_users.set(len(self.histories))

    # ------------------------------------------------------------------ lifecycle
    def ready(self) -> bool:
        return self._serving()

    def wait(self) -> None:
        self.grpc.wait()

    def start(self) -> "InferenceService":
        if self.config.kafka.topics.create:
            names = [self.config.kafka.topics.name("model_versions")]
            if self.follower is not None:
                names.append(self.config.kafka.topics.name("events"))
            ensure_topics(self.config.kafka, names)
        if self.metrics_server is not None:
            self.metrics_server.start()
        self.grpc.start()
        self.watcher.start()
        if self.deltas is not None:
            self.deltas.start()
        logger.info("inference serving", extra={"port": self.port, "model": self.config.inference.model_name,
                                                "pid": os.getpid()})
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.repository.ready:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no model loaded after {timeout_s}s")
            time.sleep(0.05)

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING first, drain in-flight calls, then stop the background work."""
        self._stopping = True
        self.grpc.stop(self.config.grpc.shutdown_grace_s if grace_s is None else grace_s)
        self.watcher.stop()
        if self.deltas is not None:
            self.deltas.stop()
        if self.follower is not None:
            self.follower.stop()
        if self.batcher is not None:
            self.batcher.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        close = getattr(self.source, "close", None)
        if close:
            close()
