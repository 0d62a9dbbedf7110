"""Benchmarks: each prints one JSON line; run them with ``streamrec bench <name>``."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

_T = TypeVar("_T")


def lower_median(values: Sequence[_T], key: Callable[[_T], float]) -> _T | None:
    """The median element by ``key`` (the lower middle one of an even count), for benches that report the
    median of several rounds; None for no values."""
    ordered = sorted(values, key=key)
    return ordered[(len(ordered) - 1) // 2] if ordered else None
