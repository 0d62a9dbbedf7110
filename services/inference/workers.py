"""Several inference processes sharing one gRPC port (by default one per core, ``inference.processes``).

Each worker is a whole ``InferenceService`` (its own models and histories) bound with SO_REUSEPORT;
worker i serves metrics on ``metrics.port + i``. ``InferenceWorkers`` is the parent: stopping it
passes SIGTERM to every worker, which reports NOT_SERVING, drains and exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys

from services.common.entrypoint import run_service
from services.common.logging import configure_logging
from services.inference.config import InferenceConfig

logger = logging.getLogger(__name__)


def _worker(config_json: str, index: int) -> None:
    from services.inference.service import InferenceService

    config = InferenceConfig.model_validate_json(config_json)
    name = f"inference-{index}"
    configure_logging(config.logging.level, config.logging.format, service=name)
    metrics_port = config.metrics.port + index if config.metrics.port else 0
    sys.exit(run_service(InferenceService(config, reuse_port=True, metrics_port=metrics_port), name=name,
                         stop_timeout_s=config.lifecycle.stop_timeout_s))


class InferenceWorkers:
    def __init__(self, config: InferenceConfig) -> None:
        self.config = config
        ctx = multiprocessing.get_context("spawn")
        self.processes = [ctx.Process(target=_worker, args=(config.model_dump_json(), i), name=f"inference-{i}")
                          for i in range(config.worker_processes())]

    def ready(self) -> bool:
        return all(p.is_alive() for p in self.processes)

    def start(self) -> "InferenceWorkers":
        for p in self.processes:
            p.start()
        logger.info("inference workers started", extra={"processes": len(self.processes), "port": self.config.grpc.port})
        return self

    def stop(self) -> None:
        for p in self.processes:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    def wait(self) -> int:
        for p in self.processes:
            p.join()
        return max((p.exitcode or 0) for p in self.processes)
