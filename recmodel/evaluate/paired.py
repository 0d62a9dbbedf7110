"""Paired comparison of two models on the same held-out events (champion/challenger).

Both models rank the same events, so each event gives a pair of outcomes (hit or miss at k). Events
both models hit or both miss say nothing about which is better; only the discordant ones do: ``b``
events only the candidate hits, ``c`` events only production hits. The difference in hit rate is
``(b - c) / n``.

The confidence bound is exact and needs no random numbers: given ``m = b + c`` discordant events,
``b`` is Binomial(m, p) and the expected difference is ``m (2p - 1) / n``, so a Clopper-Pearson
interval for ``p`` maps onto an interval for the difference (the interval that goes with McNemar's
exact test, i.e. the sign test on discordant pairs). ``p_value`` is that two-sided sign test of
"neither model is better". With no discordant events the interval is [0, 0]: the two models agree
on every event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from recmodel.data import HistoryEntry
from recmodel.evaluate.metrics import target_rank
from recmodel.evaluate.protocol import Scorer


@dataclass(frozen=True)
class PairedDifference:
    """Candidate minus production hit rate over ``n`` paired events, with a ``confidence`` interval."""

    n: int
    candidate_hits: int
    production_hits: int
    candidate_only: int  # b: events only the candidate hits
    production_only: int  # c: events only production hits
    confidence: float
    lower: float
    upper: float
    p_value: float

    @property
    def candidate_rate(self) -> float:
        return self.candidate_hits / self.n if self.n else 0.0

    @property
    def production_rate(self) -> float:
        return self.production_hits / self.n if self.n else 0.0

    @property
    def difference(self) -> float:
        return (self.candidate_only - self.production_only) / self.n if self.n else 0.0


def paired_difference(candidate: Sequence[bool], production: Sequence[bool],
                      confidence: float = 0.95) -> PairedDifference:
    """Exact paired comparison of per-event hits (see the module docstring)."""
    if len(candidate) != len(production):
        raise ValueError(f"paired outcomes differ in length: {len(candidate)} vs {len(production)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    cand = np.asarray(candidate, dtype=bool)
    prod = np.asarray(production, dtype=bool)
    n = int(cand.size)
    b = int(np.count_nonzero(cand & ~prod))
    c = int(np.count_nonzero(prod & ~cand))
    m = b + c
    if n == 0 or m == 0:
        lower = upper = 0.0
    else:
        p_lo, p_hi = clopper_pearson(b, m, confidence)
        lower, upper = m * (2 * p_lo - 1) / n, m * (2 * p_hi - 1) / n
    return PairedDifference(
        n=n, candidate_hits=int(np.count_nonzero(cand)), production_hits=int(np.count_nonzero(prod)),
        candidate_only=b, production_only=c, confidence=confidence, lower=lower, upper=upper,
        p_value=sign_test(b, c),
    )


def sign_test(b: int, c: int) -> float:
    """Two-sided exact sign test: P(a split at least this uneven | each discordant event is a coin flip)."""
    m = b + c
    if m == 0:
        return 1.0
    tail = _binomial_cdf(min(b, c), m, 0.5)
    return min(1.0, 2.0 * tail)


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion."""
    if not 0 <= successes <= trials or trials <= 0:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    alpha = 1.0 - confidence
    # lower: P(X >= successes | p) = alpha/2; upper: P(X <= successes | p) = alpha/2.
    lower = 0.0 if successes == 0 else _solve(lambda p: 1.0 - _binomial_cdf(successes - 1, trials, p) - alpha / 2)
    upper = 1.0 if successes == trials else _solve(lambda p: alpha / 2 - _binomial_cdf(successes, trials, p))
    return lower, upper


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact enough for any n we meet)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def _solve(increasing, lo: float = 0.0, hi: float = 1.0, iterations: int = 60) -> float:
    """Root of a function increasing in p on [lo, hi], by bisection (60 halvings: below 1e-15)."""
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if increasing(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# Scores held at once by hits_at_k (16M: 64 MB of float32), whatever the catalogue's size.
SCORE_BUDGET = 1 << 24


def hits_at_k(
    model: Scorer,
    histories: Sequence[Sequence[HistoryEntry]],
    now_ms: Sequence[int],
    targets: Sequence[str],
    item_ids: Sequence[str],
    k: int = 10,
    batch_size: int = 256,
) -> np.ndarray:
    """Whether each target ranks in the top ``k`` of ``item_ids`` (full ranking, the user's seen items excluded).

    ``item_ids`` is the catalogue the model could serve; a target outside it is a miss. Seen items are
    those in the history other than the target itself (a re-consumed item stays rankable), as in the
    prequential evaluation; ties count by expected rank (``target_rank``).
    """
    item_ids = tuple(item_ids)  # one immutable catalogue for every batch (a scorer may keep what it derives)
    index = {iid: j for j, iid in enumerate(item_ids)}
    out = np.zeros(len(targets), dtype=bool)
    rows = [i for i, t in enumerate(targets) if t in index]
    # At most SCORE_BUDGET scores at once: 256 queries over a million items would be a gigabyte.
    batch_size = max(1, min(batch_size, SCORE_BUDGET // max(len(item_ids), 1)))
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo : lo + batch_size]
        # Kept in the scorer's own precision: a float32 score compares the same way once widened.
        scores = np.asarray(model.score([histories[i] for i in chunk], [int(now_ms[i]) for i in chunk], item_ids))
        for row, i in enumerate(chunk):
            s = scores[row]
            target = targets[i]
            seen = [index[h[0]] for h in histories[i] if h[0] in index and h[0] != target]
            if seen:
                s = s.copy()
                s[seen] = -np.inf
            out[i] = target_rank(s, index[target]) < k
    return out
