"""Small array helpers of the scoring hot paths (serving, the promotion gate's judge)."""

from __future__ import annotations

import numpy as np

# Above this many pairwise comparisons, np.isin's sort-based test is cheaper than comparing every pair.
_BROADCAST_LIMIT = 1 << 20


def member_mask(values: np.ndarray, of: np.ndarray) -> np.ndarray:
    """``np.isin(values, of)`` for 1-d integer arrays. A request filters a few dozen retrieved rows against its
    seen and excluded rows, where comparing every pair costs a fifth of np.isin (4.5 against 25 us for 58
    rows and 15; 30 against 104 us for 58 and 1,000)."""
    values = np.asarray(values)
    of = np.asarray(of)
    if len(values) * len(of) > _BROADCAST_LIMIT:
        return np.isin(values, of)
    return (values[:, None] == of[None, :]).any(axis=1)
