"""Bounded caches of the Recommend hot path: user vectors and whole answers.

Both are keyed by the user's history version (``UserHistoryStore.get_versioned``, which changes with
every new event of the user) and the model version, so a new event or a model swap is never answered
from the cache; entries also expire after ``ttl_s``, since the encoder reads the time since the user's
last interaction. Least recently used entries go first once ``max_entries`` is reached.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class TtlLruCache(Generic[V]):
    def __init__(self, max_entries: int, ttl_s: float, on_lookup: Callable[[bool], None] | None = None) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._on_lookup = on_lookup
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> V | None:
        """The live entry under ``key``, or None (always None, and not counted, when the cache is off)."""
        if self.max_entries <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            found = self._entries.get(key)
            if found is not None and found[0] <= now:
                del self._entries[key]
                found = None
            if found is None:
                self.misses += 1
            else:
                self._entries.move_to_end(key)
                self.hits += 1
        if self._on_lookup:
            self._on_lookup(found is not None)
        return None if found is None else found[1]

    def put(self, key: Hashable, value: V) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def hit_ratio(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None
