"""A bounded, growing item vocabulary: item id -> embedding slot.

Slots are stable (an id keeps its slot for as long as it is in the vocabulary, across checkpoints).
When the vocabulary is full, the id that was seen least recently is evicted and its slot reused;
the caller re-initialises whatever it stores per slot (``add`` reports the evicted id).
Slot 0 is reserved for padding / unknown items.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


class ItemVocabulary:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._slot_of: dict[str, int] = {}
        self._id_at: list[str | None] = [None] * (capacity + 1)
        self._last_seen = np.full(capacity + 1, np.iinfo(np.int64).max, dtype=np.int64)
        self._high_water = 0  # highest slot ever handed out
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._slot_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._slot_of)

    @property
    def high_water(self) -> int:
        return self._high_water

    def slot(self, item_id: str) -> int:
        """The slot of ``item_id``, or 0 when it is not in the vocabulary."""
        return self._slot_of.get(item_id, 0)

    def item_id(self, slot: int) -> str | None:
        return self._id_at[slot]

    def touch(self, item_id: str, time_ms: int) -> None:
        slot = self._slot_of.get(item_id)
        if slot is not None and time_ms > self._last_seen[slot]:
            self._last_seen[slot] = time_ms

    def add(self, item_id: str, time_ms: int) -> tuple[int, str | None]:
        """Return ``(slot, evicted_id)``; an id already present is only touched."""
        slot = self._slot_of.get(item_id)
        if slot is not None:
            self.touch(item_id, time_ms)
            return slot, None
        evicted = None
        if self._high_water < self.capacity:
            self._high_water += 1
            slot = self._high_water
        else:
            slot = int(np.argmin(self._last_seen[1:])) + 1
            evicted = self._id_at[slot]
            del self._slot_of[evicted]  # type: ignore[arg-type]
            self.evictions += 1
        self._slot_of[item_id] = slot
        self._id_at[slot] = item_id
        self._last_seen[slot] = time_ms
        return slot, evicted

    def items(self) -> list[tuple[str, int]]:
        """(item_id, slot) pairs ordered by slot."""
        return sorted(self._slot_of.items(), key=lambda kv: kv[1])

    def state_dict(self, copy_ids: bool = True) -> dict:
        """The vocabulary's state; ``copy_ids=False`` hands over its own id list (serialize it at once)."""
        return {
            "capacity": self.capacity,
            "ids": list(self._id_at) if copy_ids else self._id_at,
            "last_seen": self._last_seen.copy(),
            "high_water": self._high_water,
            "evictions": self.evictions,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "ItemVocabulary":
        vocab = cls(int(state["capacity"]))
        vocab._id_at = list(state["ids"])
        vocab._last_seen = np.asarray(state["last_seen"], dtype=np.int64).copy()
        vocab._high_water = int(state["high_water"])
        vocab.evictions = int(state["evictions"])
        vocab._slot_of = {iid: s for s, iid in enumerate(vocab._id_at) if iid is not None}
        return vocab
