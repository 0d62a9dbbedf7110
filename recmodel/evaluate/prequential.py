"""Prequential (test-then-train) evaluation over a stream.

The stream is cut into windows; every positive event of a window is first predicted from the user's
history so far (ranked among all items the model knows, the user's past items excluded), then the
model trains on the window. Items the model does not know yet count as misses.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from recmodel.data.types import DEFAULT_EVENT_WEIGHTS, Event
from recmodel.evaluate.metrics import hit_rate, ndcg, target_rank


class StreamingModel(Protocol):
    item_ids: Sequence[str]

    def score(self, histories, now_ms, item_ids) -> np.ndarray: ...

    def train_events(self, events: Sequence[Event]) -> object: ...


def prequential_evaluate(
    model: StreamingModel,
    events: Sequence[Event],
    *,
    k: int = 10,
    window: int = 256,
    max_history: int = 50,
    exclude_seen: bool = True,
    event_weights: dict[str, float] | None = None,
) -> dict[str, float]:
    weights = event_weights or getattr(model, "event_weights", None) or DEFAULT_EVENT_WEIGHTS
    histories: dict[str, list[tuple[str, str, int]]] = {}
    ranks: list[float] = []
    for lo in range(0, len(events), window):
        chunk = events[lo : lo + window]
        queries = []
        for e in chunk:
            hist = histories.setdefault(e.user_id, [])
            if weights.get(e.type, 0.0) > 0:
                queries.append((list(hist[-max_history:]), e.timestamp_ms, e.item_id))
            hist.append((e.item_id, e.type, e.timestamp_ms))
            if len(hist) > 4 * max_history:
                del hist[: -max_history]
        item_ids = list(model.item_ids)
        index = {iid: j for j, iid in enumerate(item_ids)}
        answerable = [q for q in queries if q[2] in index]
        ranks.extend([float("inf")] * (len(queries) - len(answerable)))
        if answerable and item_ids:
            scores = np.asarray(model.score([q[0] for q in answerable], [q[1] for q in answerable], item_ids), dtype=np.float64)
            for row, (hist, _, target) in enumerate(answerable):
                s = scores[row]
                t = index[target]
                if exclude_seen:
                    seen = [index[h[0]] for h in hist if h[0] in index and h[0] != target]
                    s = s.copy()
                    s[seen] = -np.inf
                ranks.append(target_rank(s, t))
        model.train_events(chunk)
    return {f"hr@{k}": hit_rate(ranks, k), f"ndcg@{k}": ndcg(ranks, k), "predictions": len(ranks)}
