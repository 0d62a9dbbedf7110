"""Await a condition with a deadline instead of sleeping a fixed time."""

from __future__ import annotations

import time


def wait_for(predicate, timeout_s: float = 30.0, what: str = "condition", interval_s: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
