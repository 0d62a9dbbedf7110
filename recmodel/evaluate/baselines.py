"""Non-personalised and neighbourhood baselines with the evaluation :class:`Scorer` interface."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from recmodel.data.types import DEFAULT_EVENT_WEIGHTS, Event
from recmodel.transitions import TransitionTable


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


class TransitionBaseline:
    """The trainer's item-to-item transition table alone (:mod:`recmodel.transitions`): a user's score
    for an item is the decayed frequency with which it followed their last few items."""

    def __init__(self, *, window: int = 5, decay: float = 0.7, max_next: int = 64, span: int = 1,
                 span_decay: float = 0.7, backward: float = 0.0,
                 event_weights: Mapping[str, float] | None = None) -> None:
        self.event_weights = dict(event_weights or DEFAULT_EVENT_WEIGHTS)
        self.table = TransitionTable(max_next=max_next, window=window, decay=decay, span=span,
                                     span_decay=span_decay, backward=backward)

    def fit(self, events: Sequence[Event]) -> "TransitionBaseline":
        # Consecutive events of a user form one sequence, and sequences go to the table in batches with each
        # user at most once: the same pairs in the same order as one event at a time, in few calls.
        recent: dict[str, list[tuple[str, bool]]] = {}
        batch: list[tuple[str, list[tuple[str, bool]]]] = []
        users: set[str] = set()

        def count() -> None:
            for (user, _), tail in zip(batch, self.table.observe_sequences([(recent.get(u), s) for u, s in batch])):
                recent[user] = tail
            batch.clear()
            users.clear()

        for e in events:
            step = (e.item_id, self.event_weights.get(e.type, 0.0) > 0)
            if batch and batch[-1][0] == e.user_id:
                batch[-1][1].append(step)
                continue
            if e.user_id in users:
                count()
            batch.append((e.user_id, [step]))
            users.add(e.user_id)
        count()
        return self

    def score(self, histories, now_ms, item_ids: Sequence[str]) -> np.ndarray:
        column = {iid: j for j, iid in enumerate(item_ids)}
        out = np.zeros((len(histories), len(item_ids)), dtype=np.float64)
        for b, hist in enumerate(histories):
            for iid, value in self.table.bonus([h[0] for h in hist]).items():
                if iid in column:
                    out[b, column[iid]] = value
        return out


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


class ALSBaseline:
    """Implicit-feedback matrix factorisation (ALS from the ``implicit`` library, a well-kept reference).

    A user's vector is recomputed from the history handed to :meth:`score` (one exact least-squares
    solve against the item factors), so held-out events the user had since training count as input,
    exactly as for the sequential models.
    """

    def __init__(self, *, factors: int = 128, regularization: float = 0.05, alpha: float = 1.0,
                 iterations: int = 15, seed: int = 0, event_weights: Mapping[str, float] | None = None) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed
        self.event_weights = dict(event_weights or DEFAULT_EVENT_WEIGHTS)
        self.item_index: dict[str, int] = {}
        self.model = None

    def _matrix(self, rows: Sequence[Sequence[str]]):
        from scipy.sparse import csr_matrix

        data, indices, indptr = [], [], [0]
        for items in rows:
            cols = sorted({self.item_index[i] for i in items if i in self.item_index})
            indices.extend(cols)
            data.extend([1.0] * len(cols))
            indptr.append(len(indices))
        return csr_matrix((np.array(data, dtype=np.float32), indices, indptr), shape=(len(rows), len(self.item_index)))

    def fit(self, events: Sequence[Event]) -> "ALSBaseline":
        from implicit.als import AlternatingLeastSquares

        pos = _positive(events, self.event_weights)
        self.item_index = {i: n for n, i in enumerate(dict.fromkeys(e.item_id for e in pos))}
        per_user: dict[str, list[str]] = {}
        for e in pos:
            per_user.setdefault(e.user_id, []).append(e.item_id)
        self.model = AlternatingLeastSquares(
            factors=self.factors, regularization=self.regularization, alpha=self.alpha,
            iterations=self.iterations, random_state=self.seed, calculate_training_loss=False,
        )
        self.model.fit(self._matrix(list(per_user.values())), show_progress=False)
        return self

    def score(self, histories, now_ms, item_ids: Sequence[str]) -> np.ndarray:
        user_items = self._matrix([[h[0] for h in hist if self.event_weights.get(h[1], 0.0) > 0] for hist in histories])
        users = np.asarray(self.model.recalculate_user(np.arange(len(histories)), user_items))
        items = np.asarray(self.model.item_factors)
        cols = np.array([self.item_index.get(i, -1) for i in item_ids])
        out = np.full((len(histories), len(item_ids)), -np.inf)
        known = cols >= 0
        out[:, known] = users @ items[cols[known]].T
        return out
