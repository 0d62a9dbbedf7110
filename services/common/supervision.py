"""Supervised background loops: a loop that dies is restarted with backoff, counted, and reported.

``SupervisedThread`` runs ``target()`` on a daemon thread until ``stop`` is set. When the target
raises (or returns while nobody asked it to stop) the failure is logged with its stack trace,
``on_restart(name, error)`` is called (services count it in a metric), and the target runs again
after a backoff that doubles from ``initial_backoff_s`` up to ``max_backoff_s``. After
``max_failures`` failures in a row the loop is *unhealthy*: ``on_health(name, False)`` lets the
service report NOT_SERVING, while restarts go on at the longest backoff. A run that stays up for
``stable_after_s`` proves the loop recovered: the failure count resets and, if it was unhealthy,
``on_health(name, True)`` follows.

The target owns its resources (a consumer, a connection) and must release them when it raises or
returns; it must return promptly once ``stop`` is set. Expected, transient trouble (Kafka away for a
while) is the target's to wait out; what reaches the supervisor is the unexpected.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

logger = logging.getLogger(__name__)


def wait_for(predicate: Callable[[], object], timeout_s: float = 30.0, what: str = "condition",
             interval_s: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned); TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class SupervisedThread:
    def __init__(
        self,
        name: str,
        target: Callable[[], None],
        stop: threading.Event,
        *,
        on_restart: Callable[[str, BaseException | None], None] | None = None,
        on_health: Callable[[str, bool], None] | None = None,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_failures: int = 5,
        stable_after_s: float = 60.0,
    ) -> None:
        self.name = name
        self.target = target
        self.stop_event = stop
        self.on_restart = on_restart
        self.on_health = on_health
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_failures = max_failures
        self.stable_after_s = stable_after_s
        self.restarts = 0
        self.failures_in_a_row = 0
        self.last_error: BaseException | None = None
        self._healthy = True
        self._lock = threading.Lock()
        self._run_id = 0
        self._thread: threading.Thread | None = None

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def started(self) -> bool:
        return self._thread is not None

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "SupervisedThread":
        if self._thread is None:
            self._thread = threading.Thread(target=self._supervise, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float | None = 15.0) -> None:
        self.stop_event.set()
        self.join(timeout_s)

    def join(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ------------------------------------------------------------------ the loop
    def _supervise(self) -> None:
        backoff = self.initial_backoff_s
        while not self.stop_event.is_set():
            started = time.monotonic()
            timer = self._watch_for_recovery()
            error: BaseException | None = None
            try:
                self.target()
            except Exception as exc:  # noqa: BLE001 - whatever kills the loop is logged, counted and retried
                error = exc
            finally:
                with self._lock:
                    self._run_id += 1  # the recovery timer of this run no longer applies
                if timer is not None:
                    timer.cancel()
            if self.stop_event.is_set():
                return
            if time.monotonic() - started >= self.stable_after_s:
                self.failures_in_a_row = 0
                backoff = self.initial_backoff_s
            self.failures_in_a_row += 1
            self.restarts += 1
            self.last_error = error
            logger.error("background loop died; restarting", exc_info=error, extra={
                "loop": self.name, "failures_in_a_row": self.failures_in_a_row, "restart_in_s": round(backoff, 2),
                "error": "returned without being stopped" if error is None else f"{type(error).__name__}: {error}"})
            self._call(self.on_restart, self.name, error)
            if self.failures_in_a_row >= self.max_failures:
                self._set_healthy(False)
            self.stop_event.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _watch_for_recovery(self) -> threading.Timer | None:
        """While failing, a run that lasts ``stable_after_s`` clears the failures (and the unhealthy mark)."""
        if self.failures_in_a_row == 0:
            return None
        with self._lock:
            run_id = self._run_id

        def recovered() -> None:
            with self._lock:
                if run_id != self._run_id or self.stop_event.is_set():
                    return
                self.failures_in_a_row = 0
            logger.info("background loop recovered", extra={"loop": self.name})
            self._set_healthy(True)

        timer = threading.Timer(self.stable_after_s, recovered)
        timer.daemon = True
        timer.start()
        return timer

    def _set_healthy(self, healthy: bool) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if not healthy:
            logger.error("background loop keeps failing; reporting unhealthy",
                         extra={"loop": self.name, "failures_in_a_row": self.failures_in_a_row})
        self._call(self.on_health, self.name, healthy)

    @staticmethod
    def _call(callback, *args) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - a broken callback must not stop the supervision
            logger.exception("supervision callback failed")
