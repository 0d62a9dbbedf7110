"""Ranking metrics from the 0-based rank of the held-out item.

Ties: a target tied with ``n_equal`` other candidates gets rank ``n_greater + n_equal / 2`` (the
expected rank under a random tie break), so a model that scores everything equal earns the same as a
random ranking, never a free hit.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np


def target_rank(scores: np.ndarray, target: int, candidates: np.ndarray | None = None) -> float:
    """Rank of ``scores[target]`` among ``scores[candidates]`` (all entries when None, target excluded)."""
    s = scores if candidates is None else scores[candidates]
    t = scores[target]
    if not np.isfinite(t):
        return math.inf
    greater = int(np.count_nonzero(s > t))
    equal = int(np.count_nonzero(s == t)) - 1  # the target itself is among the candidates
    return greater + max(equal, 0) / 2.0


def hit_rate(ranks: Iterable[float], k: int) -> float:
    r = np.asarray(list(ranks), dtype=np.float64)
    return float(np.mean(r < k)) if r.size else 0.0


def ndcg(ranks: Iterable[float], k: int) -> float:
    r = np.asarray(list(ranks), dtype=np.float64)
    if not r.size:
        return 0.0
    gains = np.where(r < k, 1.0 / np.log2(np.minimum(r, k) + 2.0), 0.0)
    return float(np.mean(gains))
