"""Weight deltas between full versions: the trainer's fast path to inference.

Every ``trainer.delta_interval_s`` while the trainer is at most ``trainer.delta_max_lag`` records behind the
stream, ``DeltaShipper`` captures a delta of the
trainer's state against its last registered version (``recmodel.delta``: the encoder, the item rows that
changed and a copy of the transition counts) on the training thread, and encodes and registers it from a
thread of its own (the transition rows as CSR cost tens of ms per thousand items), so training goes on
meanwhile. Full versions keep every guarantee (gate, rollback); a delta names
the version it applies to, so it reaches inference only while that version is production. One delta
is in flight at a time; a failed one is counted and the next one carries its changes anyway.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from recmodel.artifact import read_manifest
from recmodel.delta import DeltaBase, DeltaCapture, capture_delta, encode_delta
from services.common.registry_client import RegistryClient
from services.trainer.metrics import TrainerMetrics

logger = logging.getLogger(__name__)


class _TooLarge(Exception):
    def __init__(self, size: int, counts: dict) -> None:
        super().__init__(f"{size} bytes")
        self.size, self.counts = size, counts


class _NotBuilt(Exception):
    """Encoding a captured delta failed."""


class DeltaShipper:
    def __init__(self, client: RegistryClient, metrics: TrainerMetrics, *, model_name: str, trainer_id: str,
                 interval_s: float, max_bytes: int, max_lag: int = 5000) -> None:
        self.client = client
        self.metrics = metrics
        self.model_name = model_name
        self.trainer_id = trainer_id
        self.interval_s = interval_s
        self.max_bytes = max_bytes
        self.max_lag = max_lag
        self._base: tuple[int, DeltaBase] | None = None  # (registered version, its item table and transitions)
        self._shipped_steps = -1  # trainer.steps the last delta (or the base) has
        self._last = 0.0
        self._future: Future | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="trainer-delta") if interval_s > 0 else None
        self._warned_failure = False

    @property
    def enabled(self) -> bool:
        return self._pool is not None

    def base_of(self, artifact_dir: Path) -> DeltaBase | None:
        """What deltas of the version ``artifact_dir`` becomes are computed against (read at export, before
        the directory can be pruned); None when deltas are off."""
        if not self.enabled:
            return None
        return DeltaBase.from_artifact(artifact_dir, read_manifest(artifact_dir))

    def registered(self, version: int, base: DeltaBase | None, steps: int) -> None:
        """A full version was registered from the state at ``steps``: deltas are of it from now on."""
        if base is not None:
            self._base = (version, base)
            self._shipped_steps = steps

    def due(self, now: float, steps: int, lag: int | None) -> bool:
        """Time for a delta: one interval since the last, something trained since, none in flight, and the trainer
        near enough to the end of the stream (``lag`` records behind, None before it is known) for it to be fresh."""
        return (self._base is not None and lag is not None and lag <= self.max_lag and self._future is None
                and steps != self._shipped_steps and now - self._last >= self.interval_s)

    def ship(self, trainer, offsets: dict[str, dict[int, int]], newest_event_ms: int) -> None:
        """Capture a delta of ``trainer`` (this thread: the encoder, the moved item rows, a copy of the
        transition counts), then encode and register it on the shipper's thread while training goes on."""
        version, base = self._base
        start = time.perf_counter()
        self._last = time.monotonic()
        self._shipped_steps = trainer.steps
        try:
            capture = capture_delta(trainer, base)
        except Exception as exc:  # noqa: BLE001 - a delta is an optimisation: training and full versions go on
            self._count_failure("build", exc)
            return
        self.metrics.delta_duration.observe(time.perf_counter() - start)
        created = int(time.time() * 1000)
        self._future = self._pool.submit(self._encode_and_register, capture, version, offsets,
                                         created_at_ms=created, newest_event_ms=int(newest_event_ms))

    def _encode_and_register(self, capture: DeltaCapture, version: int, offsets, *, created_at_ms: int,
                             newest_event_ms: int) -> None:
        try:
            data, counts = encode_delta(capture)
        except Exception as exc:  # noqa: BLE001 - counted as a build failure by collect()
            raise _NotBuilt(exc) from exc
        if len(data) > self.max_bytes:
            raise _TooLarge(len(data), counts)
        self.client.register_delta(self.model_name, version, data, offsets, created_at_ms=created_at_ms,
                                   newest_event_ms=newest_event_ms, trainer_id=self.trainer_id)

    def _count_failure(self, reason: str, exc: BaseException) -> None:
        self.metrics.delta_failures.labels(reason).inc()
        if not self._warned_failure:  # once per run of failures: one a second would flood the log
            logger.warning("weight delta not shipped; full versions go on", extra={"reason": reason, "error": str(exc)},
                           exc_info=reason == "build")
            self._warned_failure = True

    def collect(self, wait: bool = False) -> None:
        """Count the delta in flight once it is done (waiting for it with ``wait``)."""
        future = self._future
        if future is None or (not wait and not future.done()):
            return
        self._future = None
        exc = future.exception()
        if exc is None:
            self.metrics.deltas_shipped.inc()
            if self._warned_failure:
                logger.info("weight deltas are registered again")
                self._warned_failure = False
        elif isinstance(exc, _TooLarge):
            self.metrics.delta_failures.labels("too_large").inc()
            logger.info("weight delta over trainer.delta_max_bytes: not shipped; the next full version carries it",
                        extra={"bytes": exc.size, "max_bytes": self.max_bytes, **exc.counts})
        elif isinstance(exc, _NotBuilt):
            self._count_failure("build", exc.__cause__ or exc)
        else:
            self._count_failure("refused", exc)

    def close(self) -> None:
        self.collect(wait=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
