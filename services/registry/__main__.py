"""``streamrec registry``: the model registry gRPC service."""

from __future__ import annotations

import argparse
import sys

from services.common.config import load_config
from services.common.errors import ConfigError
from services.common.grpc import install_shutdown_handler
from services.common.logging import configure_logging
from services.registry.config import RegistryConfig
from services.registry.service import RegistryService


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamrec registry", description="Run the model registry service.")
    parser.add_argument("--config", help="YAML config file (env STREAMREC_CONFIG); env STREAMREC_<SECTION>_<KEY> overrides")
    args = parser.parse_args(argv)
    try:
        config = load_config(RegistryConfig, args.config)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    configure_logging(config.logging.level, config.logging.format, service="registry")
    service = RegistryService(config).start()
    install_shutdown_handler(service.stop)
    service.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
