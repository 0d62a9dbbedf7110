"""``streamrec trainer --config FILE``: train from the stream and register versions."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from prometheus_client import CollectorRegistry

from services.common.entrypoint import load_service_config
from services.common.metrics import MetricsServer
from services.trainer.config import TrainerConfig

logger = logging.getLogger("services.trainer")


def build_elector(config: TrainerConfig, metrics=None):
    from services.trainer.leader import (
        AlwaysLeader,
        LeaseElector,
        coordination_api,
        default_identity,
        default_namespace,
    )

    le = config.trainer.leader_election
    if not le.enabled:
        return AlwaysLeader()
    return LeaseElector(
        coordination_api(le.kubeconfig), name=le.lease_name, namespace=le.namespace or default_namespace(),
        identity=le.identity or default_identity(), lease_duration_s=le.lease_duration_s,
        renew_deadline_s=le.renew_deadline_s, retry_period_s=le.retry_period_s,
        on_loop_restart=(lambda loop, _exc: metrics.loop_restarts.labels(loop).inc()) if metrics else None)


def main(argv: list[str] | None = None) -> int:
    config = load_service_config(TrainerConfig, argv, service="trainer", description=__doc__)

    if config.trainer.distributed.enabled:
        from services.trainer.distributed import run_distributed

        return run_distributed(config)

    from services.common.kafka import ensure_topics
    from services.trainer.metrics import TrainerMetrics
    from services.trainer.service import TrainerService

    registry = CollectorRegistry()
    metrics = TrainerMetrics(registry)
    service = TrainerService(config, metrics, build_elector(config, metrics))
    server = None
    if config.metrics.enabled:
        server = MetricsServer(registry, config.metrics.host, config.metrics.port, ready=service.ready).start()

    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        logger.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if config.kafka.topics.create:
        ensure_topics(config.kafka, [config.kafka.topics.name("events"), config.kafka.topics.name("items")])
    try:
        service.run(stop)
    finally:
        if server:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
