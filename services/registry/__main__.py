"""``streamrec registry``: the model registry gRPC service."""

from __future__ import annotations

import sys

from services.common.entrypoint import load_service_config, run_service
from services.registry.config import RegistryConfig


def main(argv: list[str] | None = None) -> int:
    config = load_service_config(RegistryConfig, argv, service="registry", description="Run the model registry service.")
    from services.registry.service import RegistryService

    return run_service(RegistryService(config), name="registry", stop_timeout_s=config.lifecycle.stop_timeout_s)


if __name__ == "__main__":
    sys.exit(main())
