"""Prequential (test-then-train) hit rate over the most recent events.

Before a micro-batch is trained, each of its positive events (up to ``per_batch``) is predicted from the
user's history so far, ranked among every item the model knows with the user's past items excluded;
then the batch is trained. Ranks of the last ``window`` predictions give HR@k. Ranking uses
``recmodel.evaluate.metrics`` so the numbers mean what the offline evaluation's do.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Sequence

import numpy as np

from recmodel.data import Event
from recmodel.evaluate.metrics import hit_rate, ndcg, target_rank


class PrequentialMonitor:
    def __init__(self, *, window: int = 2000, ks: Sequence[int] = (10,), max_len: int = 50,
                 per_batch: int = 256, max_users: int = 200_000, max_history: int = 50) -> None:
        self.ranks: deque[float] = deque(maxlen=max(window, 1))
        self.ks = tuple(ks)
        self.max_len = max_len
        # Items seen further back than the encoder's window are still excluded from the ranking (as in
        # recmodel.evaluate.prequential), so the numbers compare with the offline evaluation's.
        self.max_history = max(max_history, max_len)
        self.per_batch = per_batch
        self.max_users = max_users
        self.enabled = window > 0
        # Histories of recently active users (LRU-bounded): what a served model would have seen.
        self._hist: OrderedDict[str, list[tuple[str, str, int]]] = OrderedDict()

    def observe_and_test(self, trainer, events: Sequence[Event]) -> None:
        """Rank the batch's positive events with the model as it is *before* training on them."""
        queries = []
        stride = max(1, len(events) // self.per_batch) if self.per_batch else 0
        for n, e in enumerate(events):
            hist = self._hist.get(e.user_id)
            if hist is None:
                hist = self._hist[e.user_id] = []
            else:
                self._hist.move_to_end(e.user_id)
            if self.enabled and stride and n % stride == 0 and trainer.is_positive(e.type) and hist:
                queries.append((list(hist), e.timestamp_ms, e.item_id))
            hist.append((e.item_id, e.type, int(e.timestamp_ms)))
            del hist[: -self.max_history]
        while len(self._hist) > self.max_users:
            self._hist.popitem(last=False)
        queries = queries[: self.per_batch]
        if not queries:
            return
        item_ids = trainer.item_ids
        index = {iid: j for j, iid in enumerate(item_ids)}
        answerable = [q for q in queries if q[2] in index]
        self.ranks.extend([float("inf")] * (len(queries) - len(answerable)))  # unknown items are misses
        if not answerable:
            return
        scores = np.asarray(trainer.score([q[0] for q in answerable], [q[1] for q in answerable], item_ids),
                            dtype=np.float64)
        for row, (hist, _, target) in enumerate(answerable):
            s = scores[row]
            seen = [index[h[0]] for h in hist if h[0] in index and h[0] != target]
            if seen:
                s = s.copy()
                s[seen] = -np.inf
            self.ranks.append(target_rank(s, index[target]))

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"prequential_predictions": float(len(self.ranks))}
        for k in self.ks:
            out[f"hr@{k}"] = hit_rate(self.ranks, k)
            out[f"ndcg@{k}"] = ndcg(self.ranks, k)
        return out
