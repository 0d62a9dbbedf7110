"""``streamrec registry``: the model registry gRPC service."""

from __future__ import annotations

import sys

from services.common.entrypoint import load_service_config
from services.common.grpc import install_shutdown_handler
from services.registry.config import RegistryConfig
from services.registry.service import RegistryService


def main(argv: list[str] | None = None) -> int:
    config = load_service_config(RegistryConfig, argv, service="registry", description="Run the model registry service.")
    service = RegistryService(config).start()
    install_shutdown_handler(service.stop)
    service.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
