"""What every service entrypoint does first: parse ``--config``, load and validate, set up logging."""

from __future__ import annotations

import argparse
import sys
from typing import TypeVar

from services.common.config import ServiceConfig, load_config
from services.common.errors import ConfigError
from services.common.logging import configure_logging

T = TypeVar("T", bound=ServiceConfig)


def load_service_config(model: type[T], argv: list[str] | None, *, service: str, description: str) -> T:
    """The service's config from ``--config FILE`` / ``STREAMREC_CONFIG`` and the environment.

    An invalid config stops the process (exit code 2) with a message naming the key.
    """
    parser = argparse.ArgumentParser(prog=f"streamrec {service}", description=description)
    parser.add_argument("--config", help="YAML config file (default: $STREAMREC_CONFIG, else built-in defaults); "
                                         "env STREAMREC_<SECTION>_<KEY> overrides any key")
    args = parser.parse_args(argv)
    try:
        config = load_config(model, args.config)
    except ConfigError as exc:
        print(f"streamrec {service}: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(config.logging.level, config.logging.format, service=service)
    return config
