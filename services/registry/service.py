"""RegistryService: wires database, artifact store, core, outbox announcer, gRPC and metrics servers."""

from __future__ import annotations

import logging
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.common.grpc import GrpcEndpoint, GrpcServer
from services.common.metrics import MetricsServer
from services.registry.artifact_store import ArtifactStore, make_store
from services.registry.config import RegistryConfig
from services.registry.database import Database
from services.registry.deltas import DeltaRegistry
from services.registry.gate import PromotionGate, StalenessSweeper
from services.registry.metrics import RegistryMetrics
from services.registry.announcer import OutboxAnnouncer
from services.registry.servicer import SERVICE_NAME, ModelRegistryServicer, access_policy
from services.registry.model_registry import ModelRegistry
from streamrec_proto.v1 import registry_pb2_grpc

logger = logging.getLogger(__name__)


class RegistryService(GrpcEndpoint):
    """The whole registry in one object: ``start()`` serves, ``stop()`` drains and closes.

    Health turns SERVING once the database is open and recovered; the outbox announcer runs
    beside it and does not gate readiness (Kafka being down must not stop registrations).
    """

    def __init__(self, config: RegistryConfig, store: ArtifactStore | None = None,
                 collector: CollectorRegistry | None = None) -> None:
        self.config = config
        section = config.registry
        self.collector = collector or CollectorRegistry()
        self.metrics = RegistryMetrics(self.collector)
        self.db = Database(section.database_url)
        self.store = store or make_store(section)
        staging = Path(section.staging_dir) if section.staging_dir else Path(section.artifact_root) / ".staging"
        gate = section.gate
        self.announcer = OutboxAnnouncer(self.db, config.kafka, self.metrics, retry_s=section.publish_retry_s,
                                         timeout_s=section.publish_timeout_s,
                                         max_bytes=section.max_announcement_bytes)
        self.registry = ModelRegistry(
            self.db, self.store, staging,
            PromotionGate(gate.metric, gate.tolerance, gate.min_events, gate.stale_after_s, gate.promote_first),
            metrics=self.metrics, keep_last=section.keep_last, max_artifact_bytes=section.max_artifact_bytes,
            chunk_bytes=section.chunk_bytes, on_change=self.announcer.wake,
        )
        self.deltas = DeltaRegistry(self.db, self.metrics, max_delta_bytes=section.max_delta_bytes,
                                    keep_deltas=section.keep_deltas)
        self.sweeper = StalenessSweeper(self.registry.promote_stale, gate.sweep_interval_s)
        g = config.grpc
        self.grpc = GrpcServer(g.host, g.port, g.max_workers, g.max_message_bytes,
                               observe=self.metrics.observe_request, tls=config.tls,
                               policy=access_policy(section.authorization, config.tls),
                               max_concurrent_rpcs=g.max_concurrent_rpcs, default_deadline_s=g.default_deadline_s)
        self.grpc.add(registry_pb2_grpc.add_ModelRegistryServicer_to_server,
                      ModelRegistryServicer(self.registry, self.deltas, max_reason_chars=section.max_reason_chars,
                                            parked=self.announcer.parked), SERVICE_NAME)
        self.metrics_server: MetricsServer | None = None
        if config.metrics.enabled:
            self.metrics_server = MetricsServer(self.collector, config.metrics.host, config.metrics.port,
                                                ready=self.db.ping)

    def ready(self) -> bool:
        return self.db.ping()

    def start(self) -> "RegistryService":
        if self.metrics_server:
            self.metrics_server.start()
        self.grpc.start()
        self.registry.recover()
        self.announcer.start()
        self.sweeper.start()
        self.grpc.set_serving(True)
        logger.info("registry ready", extra={"port": self.grpc.port, "database": self.db.engine.url.render_as_string()})
        return self

    def stop(self, grace_s: float | None = None) -> None:
        self.grpc.stop(self.config.grpc.shutdown_grace_s if grace_s is None else grace_s)
        self.sweeper.stop()
        self.announcer.stop()
        if self.metrics_server:
            self.metrics_server.stop()
        self.db.close()
        logger.info("registry stopped")

    def wait(self) -> None:
        self.grpc.wait()
