"""Input features of the user encoder, shared by training (torch) and serving (numpy only)."""

from __future__ import annotations

import numpy as np

from recmodel.data.types import EVENT_TYPES

N_EVENT_TYPES = len(EVENT_TYPES) + 2  # 0 = padding, 1..n = EVENT_TYPES, n+1 = unknown type
EVENT_TYPE_IDS: dict[str, int] = {t: i + 1 for i, t in enumerate(EVENT_TYPES)}
UNKNOWN_EVENT_TYPE = N_EVENT_TYPES - 1
N_GAP_BUCKETS = 26  # 0 = padding, 1.. = 1 + floor(log2(1 + gap seconds)), capped


def event_type_id(event_type: str, ids: dict[str, int] = EVENT_TYPE_IDS) -> int:
    return ids.get(event_type, UNKNOWN_EVENT_TYPE)


def gap_buckets(gaps_ms: np.ndarray, n_buckets: int = N_GAP_BUCKETS) -> np.ndarray:
    """Bucket time gaps (ms) on a log2-seconds scale; negative gaps count as zero.

    The gap of a history position is the time until the next interaction, and for the most recent one
    the time until the request ("now").
    """
    seconds = np.maximum(np.asarray(gaps_ms, dtype=np.int64), 0) // 1000
    return (1 + np.minimum(np.floor(np.log2(1.0 + seconds)), n_buckets - 2)).astype(np.int64)
