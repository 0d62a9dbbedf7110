"""Non-personalised and neighbourhood baselines with the evaluation :class:`Scorer` interface."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from recmodel.data.types import DEFAULT_EVENT_WEIGHTS, Event


def _positive(events: Sequence[Event], weights: Mapping[str, float]) -> list[Event]:
    return [e for e in events if weights.get(e.type, 0.0) > 0]


class PopularityBaseline:
    """Scores every item by how many positive interactions it had in training."""

    def __init__(self, *, event_weights: Mapping[str, float] | None = None) -> None:
        self.event_weights = dict(event_weights or DEFAULT_EVENT_WEIGHTS)
        self.counts: dict[str, float] = {}

    def fit(self, events: Sequence[Event]) -> "PopularityBaseline":
        for e in _positive(events, self.event_weights):
            self.counts[e.item_id] = self.counts.get(e.item_id, 0.0) + 1.0
        return self

    def score(self, histories, now_ms, item_ids: Sequence[str]) -> np.ndarray:
        row = np.array([self.counts.get(i, 0.0) for i in item_ids], dtype=np.float64)
        return np.tile(row, (len(histories), 1))


class ItemKNNBaseline:
    """Item-based collaborative filtering: cosine similarity of items' user sets, ``neighbors`` kept
    per item; a user's score for an item is the summed similarity to the items in their history."""

    def __init__(self, *, neighbors: int = 100, shrink: float = 10.0, event_weights: Mapping[str, float] | None = None) -> None:
        self.neighbors = neighbors
        self.shrink = shrink
        self.event_weights = dict(event_weights or DEFAULT_EVENT_WEIGHTS)
        self.item_index: dict[str, int] = {}
        self.sim = np.zeros((0, 0), dtype=np.float32)

    def fit(self, events: Sequence[Event]) -> "ItemKNNBaseline":
        pos = _positive(events, self.event_weights)
        users = {u: n for n, u in enumerate(dict.fromkeys(e.user_id for e in pos))}
        self.item_index = {i: n for n, i in enumerate(dict.fromkeys(e.item_id for e in pos))}
        m = np.zeros((len(users), len(self.item_index)), dtype=np.float32)
        for e in pos:
            m[users[e.user_id], self.item_index[e.item_id]] = 1.0
        co = m.T @ m
        norms = np.sqrt(np.diag(co))
        sim = co / (np.outer(norms, norms) + self.shrink + 1e-9)
        np.fill_diagonal(sim, 0.0)
        if self.neighbors < sim.shape[1]:
            cut = np.partition(sim, -self.neighbors, axis=1)[:, -self.neighbors][:, None]
            sim = np.where(sim >= cut, sim, 0.0)
        self.sim = sim.astype(np.float32)
        return self

    def score(self, histories, now_ms, item_ids: Sequence[str]) -> np.ndarray:
        cols = np.array([self.item_index.get(i, -1) for i in item_ids])
        known = cols >= 0
        out = np.zeros((len(histories), len(item_ids)), dtype=np.float64)
        for row, hist in enumerate(histories):
            rows = [self.item_index[h[0]] for h in hist if h[0] in self.item_index]
            if rows:
                out[row, known] = self.sim[rows][:, cols[known]].sum(axis=0)
        return out
