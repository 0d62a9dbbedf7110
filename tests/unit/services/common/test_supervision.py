"""SupervisedThread: a dying loop is restarted with backoff, counted, reported unhealthy, and recovers."""

from __future__ import annotations

import threading
import time

from services.common.supervision import SupervisedThread
from tests.waiting import wait_for


class FlakyLoop:
    """Fails ``failures`` times (raising at once), then runs until stopped."""

    def __init__(self, stop: threading.Event, failures: int) -> None:
        self.stop = stop
        self.failures = failures
        self.runs: list[float] = []

    def __call__(self) -> None:
        self.runs.append(time.monotonic())
        if len(self.runs) <= self.failures:
            raise RuntimeError(f"injected failure {len(self.runs)}")
        self.stop.wait()


def _supervised(loop: FlakyLoop, stop: threading.Event, events: list, **kw) -> SupervisedThread:
    return SupervisedThread("flaky", loop, stop, on_restart=lambda name, exc: events.append(("restart", name, str(exc))),
                            on_health=lambda name, ok: events.append(("health", name, ok)), **kw)


def test_a_loop_that_dies_is_restarted_with_growing_backoff_and_counted():
    stop = threading.Event()
    loop, events = FlakyLoop(stop, failures=3), []
    sup = _supervised(loop, stop, events, initial_backoff_s=0.05, max_backoff_s=1.0, max_failures=10).start()
    try:
        wait_for(lambda: len(loop.runs) == 4, 60, "the fourth run")
        assert sup.restarts == 3 and sup.healthy and sup.is_alive()
        assert [e[0] for e in events] == ["restart"] * 3
        assert events[0] == ("restart", "flaky", "injected failure 1")
        gaps = [b - a for a, b in zip(loop.runs, loop.runs[1:])]
        assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2, gaps  # 0.05 s doubling
    finally:
        sup.stop(5)
    assert not sup.is_alive()
    assert len(loop.runs) == 4, "no restart once stopped"


def test_a_loop_that_cannot_recover_turns_unhealthy_and_healthy_again_once_a_run_holds():
    stop = threading.Event()
    loop, events = FlakyLoop(stop, failures=3), []
    sup = _supervised(loop, stop, events, initial_backoff_s=0.01, max_backoff_s=0.02, max_failures=3,
                      stable_after_s=0.5).start()
    try:
        wait_for(lambda: not sup.healthy, 60, "unhealthy after 3 failures in a row")
        assert ("health", "flaky", False) in events
        # The fourth run stays up: after stable_after_s the loop counts as recovered.
        wait_for(lambda: sup.healthy, 60, "healthy again")
        assert events[-1] == ("health", "flaky", True) and sup.failures_in_a_row == 0
    finally:
        sup.stop(5)


def test_a_loop_returning_without_being_stopped_is_restarted_and_stop_is_prompt():
    stop = threading.Event()
    runs = []
    sup = SupervisedThread("returns", lambda: runs.append(1), stop, initial_backoff_s=0.01, max_backoff_s=0.02).start()
    wait_for(lambda: len(runs) >= 3, 60, "restarts")
    started = time.monotonic()
    sup.stop(5)
    assert not sup.is_alive() and time.monotonic() - started < 4, "stopped without waiting out stop()'s 5 s"
    assert sup.restarts >= 2 and sup.last_error is None


def test_a_broken_callback_does_not_stop_the_supervision():
    stop = threading.Event()
    loop = FlakyLoop(stop, failures=2)

    def broken(*_):
        raise ValueError("callback bug")

    sup = SupervisedThread("cb", loop, stop, on_restart=broken, on_health=broken, initial_backoff_s=0.01,
                           max_failures=1).start()
    try:
        wait_for(lambda: len(loop.runs) == 3, 60, "the loop to run again despite the callback")
    finally:
        sup.stop(5)
