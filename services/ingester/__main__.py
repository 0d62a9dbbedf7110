"""``streamrec ingester --config FILE``: run the ingester until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import sys

from prometheus_client import CollectorRegistry

from services.common.entrypoint import load_service_config
from services.common.metrics import MetricsServer
from services.ingester.config import IngesterConfig
from services.ingester.metrics import IngesterMetrics
from services.ingester.pipeline import DeliveryFailed, Ingester

logger = logging.getLogger("services.ingester")


def main(argv: list[str] | None = None) -> int:
    config = load_service_config(IngesterConfig, argv, service="ingester", description=__doc__)

    registry = CollectorRegistry()
    metrics = IngesterMetrics(registry)
    ingester = Ingester(config, metrics)
    server = None
    if config.metrics.enabled:
        server = MetricsServer(registry, config.metrics.host, config.metrics.port, ready=lambda: ingester.ready).start()

    def _graceful(signum, _frame) -> None:
        logger.info("stopping: finishing the batch in hand", extra={"signal": signal.Signals(signum).name})
        ingester.stop()

    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    code = 0
    try:
        ingester.start()
        if not ingester.stopping:
            ingester.run()
    except DeliveryFailed as exc:
        logger.error("delivery failed; exiting without committing the batch", extra={"error": str(exc)})
        code = 1
    finally:
        ingester.close()
        if server is not None:
            server.stop()
    logger.info("ingester stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
