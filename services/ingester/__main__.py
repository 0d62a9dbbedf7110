"""``streamrec ingester --config FILE``: run the ingester until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from services.common.entrypoint import load_service_config, run_service
from services.ingester.config import IngesterConfig


def main(argv: list[str] | None = None) -> int:
    config = load_service_config(IngesterConfig, argv, service="ingester", description=__doc__)
    from services.ingester.service import IngesterService

    return run_service(IngesterService(config), name="ingester", kafka=config.kafka,
                       stop_timeout_s=config.lifecycle.stop_timeout_s)


if __name__ == "__main__":
    sys.exit(main())
