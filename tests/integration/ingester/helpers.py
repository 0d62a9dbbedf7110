"""Shared by the ingester's integration tests: an in-process ingester and record headers."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from services.ingester.config import IngesterConfig, IngesterSection
from services.ingester.metrics import IngesterMetrics
from services.ingester.pipeline import Ingester
from tests.waiting import wait_for


def header_map(record) -> dict[str, bytes]:
    return {k: v for k, v in record.headers or ()}


class RunningIngester:
    """An Ingester on a background thread, stopped and closed by the fixture."""

    def __init__(self, kafka_config, **section) -> None:
        self.config = IngesterConfig(kafka=kafka_config, metrics={"port": 0},
                                     ingester=IngesterSection(**{"group_id": kafka_config.topics.prefix + "ingester",
                                                                 "poll_timeout_ms": 50, **section}))
        self.registry = CollectorRegistry()
        self.ingester = Ingester(self.config, IngesterMetrics(self.registry))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.ingester.run()
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test
            self.error = exc

    def start(self) -> "RunningIngester":
        self.ingester.start()
        self.thread.start()
        return self

    def wait_committed(self, n: int, timeout_s: float = 60.0) -> None:
        wait_for(lambda: self.error is not None or self.ingester.records_committed >= n, timeout_s,
                 f"{n} input records committed (have {self.ingester.records_committed})")
        assert self.error is None, self.error

    def metric(self, name: str, labels: dict | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def stop(self) -> None:
        self.ingester.stop()
        self.thread.join(30)
        self.ingester.close()
