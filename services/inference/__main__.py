"""``streamrec inference``: serve the Recommender gRPC service.

With ``inference.processes: N > 1`` the parent starts N worker processes sharing the gRPC port
(SO_REUSEPORT; each loads its own models and histories) and worker i serves metrics on
``metrics.port + i``. SIGTERM: every worker reports NOT_SERVING, drains, and exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys

from services.common.entrypoint import load_service_config
from services.common.grpc import install_shutdown_handler
from services.common.logging import configure_logging
from services.inference.config import InferenceConfig

logger = logging.getLogger("services.inference")


def serve(config: InferenceConfig, *, reuse_port: bool = False, metrics_port: int | None = None) -> int:
    from services.inference.server import InferenceServer

    server = InferenceServer(config, reuse_port=reuse_port, metrics_port=metrics_port)
    install_shutdown_handler(server.stop)
    server.start()
    logger.info("inference serving", extra={"port": server.port, "model": config.inference.model_name,
                                            "pid": os.getpid()})
    server.grpc.wait()
    return 0


def _worker(config_json: str, index: int) -> None:
    config = InferenceConfig.model_validate_json(config_json)
    configure_logging(config.logging.level, config.logging.format, service=f"inference-{index}")
    sys.exit(serve(config, reuse_port=True, metrics_port=config.metrics.port + index if config.metrics.port else 0))


def main(argv: list[str] | None = None) -> int:
    config = load_service_config(InferenceConfig, argv, service="inference", description="serve the Recommender gRPC service")
    n = config.inference.processes
    if n == 1:
        return serve(config)
    if config.grpc.port == 0:
        print("inference.processes > 1 needs a fixed grpc.port", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_worker, args=(config.model_dump_json(), i), name=f"inference-{i}") for i in range(n)]
    for w in workers:
        w.start()

    def forward(signum, _frame):
        for w in workers:
            if w.is_alive() and w.pid:
                os.kill(w.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    logger.info("inference workers started", extra={"processes": n, "port": config.grpc.port})
    for w in workers:
        w.join()
    return max((w.exitcode or 0) for w in workers)


if __name__ == "__main__":
    sys.exit(main())
