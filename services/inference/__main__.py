"""``streamrec inference``: serve the Recommender gRPC service (``inference.processes`` processes, default one per core)."""

from __future__ import annotations

import sys

from services.common.entrypoint import load_service_config, run_service
from services.inference.config import InferenceConfig


def main(argv: list[str] | None = None) -> int:
    config = load_service_config(InferenceConfig, argv, service="inference", description="serve the Recommender gRPC service")
    from services.inference.service import InferenceService
    from services.inference.workers import InferenceWorkers

    service = InferenceService(config) if config.worker_processes() == 1 else InferenceWorkers(config)
    return run_service(service, name="inference", kafka=config.kafka,
                       stop_timeout_s=config.lifecycle.stop_timeout_s)


if __name__ == "__main__":
    sys.exit(main())
