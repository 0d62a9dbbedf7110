"""``streamrec trainer --config FILE``: train from the stream and register versions."""

from __future__ import annotations

import sys

from services.common.entrypoint import load_service_config, run_service
from services.trainer.config import TrainerConfig


def main(argv: list[str] | None = None) -> int:
    config = load_service_config(TrainerConfig, argv, service="trainer", description=__doc__)
    if config.trainer.distributed.enabled:
        from services.trainer.distributed import run_distributed

        return run_distributed(config)
    from services.trainer.service import TrainerService

    return run_service(TrainerService.from_config(config), name="trainer", kafka=config.kafka,
                       stop_timeout_s=config.lifecycle.stop_timeout_s)


if __name__ == "__main__":
    sys.exit(main())
