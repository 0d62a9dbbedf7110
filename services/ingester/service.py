"""IngesterService: the validation pipeline on a thread of its own, with its metrics server."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from services.common.entrypoint import ServiceThread
from services.common.metrics import MetricsServer
from services.ingester.config import IngesterConfig
from services.ingester.metrics import IngesterMetrics
from services.ingester.pipeline import DeliveryFailed, Ingester

logger = logging.getLogger(__name__)


class IngesterService:
    """``start()`` runs the pipeline until ``stop()``; ``wait()`` -> 1 when a delivery failed, else 0.

    A delivery that fails for good ends the service without committing the batch in hand: the
    records are read again after the restart (and deduplicated).
    """

    def __init__(self, config: IngesterConfig, collector: CollectorRegistry | None = None) -> None:
        self.collector = collector or CollectorRegistry()
        self.metrics = IngesterMetrics(self.collector)
        self.pipeline = Ingester(config, self.metrics)
        self.metrics_server = (MetricsServer(self.collector, config.metrics.host, config.metrics.port, ready=self.ready)
                               if config.metrics.enabled else None)
        self._thread = ServiceThread("ingester", self._run, metrics_server=self.metrics_server)
        self._exit_code = 0

    def ready(self) -> bool:
        return self.pipeline.ready

    def start(self) -> "IngesterService":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.pipeline.start()
            if not self.pipeline.stopping:
                self.pipeline.run()
        except DeliveryFailed as exc:
            logger.error("delivery failed; exiting without committing the batch", extra={"error": str(exc)})
            self._exit_code = 1
        finally:
            self.pipeline.close()

    def stop(self) -> None:
        logger.info("stopping: finishing the batch in hand")
        self.pipeline.stop()

    def wait(self) -> int:
        self._thread.join()
        return self._exit_code
