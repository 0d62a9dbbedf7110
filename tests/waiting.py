"""Await a condition with a deadline instead of sleeping a fixed time (the services' own helper)."""

from services.common.supervision import wait_for

__all__ = ["wait_for"]
