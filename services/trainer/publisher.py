"""One publication at a time, off the training thread.

Publishing a version is: write the artifact (on the training thread, from the trainer's state), then
judge it on the holdout and register it (neither reads the trainer). The second part takes seconds
(ONNX scoring of the holdout, the upload, the registry's gate); run on the training thread, it stops
training for that long at every export, and a version comes every interval *plus* publish time.
``Publisher`` runs that part on a thread of its own; the training thread starts a publication only when
none is in flight and collects the outcome between micro-batches, so the service's own state (the
registration, its checkpoint) is only ever changed on the training thread.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

logger = logging.getLogger(__name__)


class Publisher:
    """``submit(fn)`` runs ``fn`` in the background (or at once when ``background`` is off);
    ``collect()`` hands back its finished future, once."""

    def __init__(self, background: bool = True) -> None:
        self.background = background
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="trainer-publish") if background else None
        self._future: Future | None = None

    @property
    def busy(self) -> bool:
        """A publication was submitted and not collected yet."""
        return self._future is not None

    def submit(self, fn: Callable[[], object]) -> None:
        if self._future is not None:
            raise RuntimeError("a publication is already in flight")
        if self._pool is not None:
            self._future = self._pool.submit(fn)
            return
        future: Future = Future()
        try:
            future.set_result(fn())
        except Exception as exc:  # noqa: BLE001 - handed to collect() as the background path does
            future.set_exception(exc)
        self._future = future

    def collect(self, wait: bool = False) -> Future | None:
        """The submitted publication's future once it is done (waiting for it with ``wait``), else None."""
        future = self._future
        if future is None or (not wait and not future.done()):
            return None
        future.exception()  # waits; the caller reads result() / exception()
        self._future = None
        return future

    def close(self) -> None:
        """Wait for a publication in flight, drop its outcome, and stop the thread."""
        future = self.collect(wait=True)
        if future is not None and future.exception() is not None:
            logger.info("publication in flight at shutdown did not finish", extra={"error": str(future.exception())})
        if self._pool is not None:
            self._pool.shutdown(wait=True)
