"""The small interface evaluation needs from a model."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from recmodel.data.types import HistoryEntry


class Scorer(Protocol):
    def score(
        self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int], item_ids: Sequence[str]
    ) -> np.ndarray:
        """Scores [len(histories), len(item_ids)]; higher is better, -inf for unknown items."""
        ...
