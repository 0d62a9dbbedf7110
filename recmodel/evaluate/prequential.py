"""Prequential (test-then-train) evaluation over a stream: the one incremental evaluator.

Before the model trains on a batch of events, each positive event of the batch is predicted from the
user's history so far, ranked among every item the model knows with the user's past items excluded;
items the model does not know yet count as misses. :class:`PrequentialEvaluator` does this for one
batch at a time: the trainer service runs it on every micro-batch (sampled, over a sliding window of
recent predictions, with a bounded set of users), and :func:`prequential_evaluate` runs it on every
event of a whole stream (:func:`prequential_evaluate_many`: several filtered views of one pass).
"""

from __future__ import annotations

from collections import OrderedDict, deque
import time
from typing import Callable, Collection, Mapping, Protocol, Sequence

import numpy as np

from recmodel.data.types import DEFAULT_EVENT_WEIGHTS, Event, HistoryEntry
from recmodel.evaluate.metrics import hit_rate, ndcg, target_rank


class StreamingModel(Protocol):
    item_ids: Sequence[str]

    def score(self, histories, now_ms, item_ids) -> np.ndarray: ...

    def train_events(self, events: Sequence[Event]) -> object: ...


class PrequentialEvaluator:
    """HR@k / NDCG@k of predictions made before training.

    ``window``: how many of the latest predictions the metrics cover (None: all). ``per_batch``: at most
    this many predictions per batch, spread evenly over it (None: every positive event). ``max_users``:
    histories kept for this many recently active users (None: all). ``max_history``: items per history
    excluded from the ranking (the encoder reads at most ``max_len`` of them). ``where``: only events it
    accepts are predicted (all events still extend the histories); ``candidates``: rank among these items
    only (default: every item the model knows); ``seconds`` is the time spent ranking.

    ``time_share``: ranking takes at most this share of the wall time between calls (None: no bound). The
    evaluator earns ``time_share`` of each interval as credit, spends it on ranking, and predicts in a batch
    only as many events as its credit pays for at the measured cost per prediction: the cost of a
    prediction grows with the catalog while the rate of batches grows with the stream, and a monitor must
    not take the time the thread it watches needs to keep up. A batch it cannot pay for still extends
    the histories.
    """

    #: credit kept at most, in seconds of ranking (a long idle spell does not buy a long burst later)
    MAX_CREDIT_S = 0.5

    def __init__(self, *, ks: Sequence[int] = (10,), window: int | None = 2000, per_batch: int | None = 256,
                 max_users: int | None = 200_000, max_history: int = 50, exclude_seen: bool = True,
                 event_weights: dict[str, float] | None = None,
                 where: Callable[[Event], bool] | None = None, candidates: Collection[str] | None = None,
                 time_share: float | None = None) -> None:
        if time_share is not None and not 0.0 < time_share <= 1.0:
            raise ValueError("time_share must be in (0, 1]")
        self.ks = tuple(ks)
        self.where = where
        self.candidates = None if candidates is None else frozenset(candidates)
        self.seconds = 0.0
        self.enabled = window is None or window > 0
        self.ranks: deque[float] = deque(maxlen=None if window is None else max(window, 1))
        self.per_batch = per_batch
        self.max_users = max_users
        self.max_history = max_history
        self.exclude_seen = exclude_seen
        self.event_weights = event_weights
        self._hist: OrderedDict[str, list[HistoryEntry]] = OrderedDict()
        self.time_share = time_share
        self._credit = 0.0
        self._last_call: float | None = None
        self._cost: float | None = None  # seconds per prediction, smoothed

    def _affordable(self, wanted: int | None) -> int | None:
        """How many predictions this batch may make under ``time_share`` (None: no bound); earns the credit."""
        if self.time_share is None:
            return wanted
        now = time.perf_counter()
        if self._last_call is not None:
            self._credit = min(self.MAX_CREDIT_S, self._credit + self.time_share * (now - self._last_call))
        self._last_call = now
        if self._cost is None:
            return wanted  # the first batch measures the cost
        affordable = int(max(self._credit, 0.0) / self._cost)
        return affordable if wanted is None else min(wanted, affordable)

    def _spent(self, seconds: float, predictions: int) -> None:
        if self.time_share is None or predictions <= 0:
            return
        self._credit -= seconds
        cost = seconds / predictions
        self._cost = cost if self._cost is None else 0.8 * self._cost + 0.2 * cost

    def observe_and_test(self, model, events: Sequence[Event], per_batch: int | None = None) -> None:
        """Rank the batch's positive events with ``model`` as it is *before* training on them; ``per_batch``
        (at least 1) overrides the evaluator's own for this batch."""
        limit = self._affordable(per_batch or self.per_batch)
        queries = self._observe(events, self.event_weights or getattr(model, "event_weights", None)
                                or DEFAULT_EVENT_WEIGHTS, limit)
        if queries:
            start = time.perf_counter()
            self._rank(model, queries)
            seconds = time.perf_counter() - start
            self.seconds += seconds
            self._spent(seconds, len(queries))

    def _observe(self, events: Sequence[Event], weights: dict[str, float],
                 per_batch: int | None) -> list[tuple[list, int, str]]:
        queries = []
        stride = max(1, len(events) // per_batch) if per_batch else 1
        enabled = self.enabled and per_batch != 0
        for n, e in enumerate(events):
            hist = self._hist.get(e.user_id)
            if hist is None:
                hist = self._hist[e.user_id] = []
            else:
                self._hist.move_to_end(e.user_id)
            if (enabled and n % stride == 0 and weights.get(e.type, 0.0) > 0 and hist
                    and (self.where is None or self.where(e))):
                queries.append((list(hist), e.timestamp_ms, e.item_id))
            hist.append((e.item_id, e.type, int(e.timestamp_ms)))
            del hist[: -self.max_history]
        while self.max_users is not None and len(self._hist) > self.max_users:
            self._hist.popitem(last=False)
        return queries[:per_batch] if per_batch else queries

    def _rank(self, model, queries: list[tuple[list, int, str]]) -> None:
        item_ids = list(model.item_ids)
        if self.candidates is not None:
            item_ids = [i for i in item_ids if i in self.candidates]
        index = {iid: j for j, iid in enumerate(item_ids)}
        answerable = [q for q in queries if q[2] in index]
        self.ranks.extend([float("inf")] * (len(queries) - len(answerable)))  # unknown items are misses
        if not answerable:
            return
        scores = np.asarray(model.score([q[0] for q in answerable], [q[1] for q in answerable], item_ids),
                            dtype=np.float64)
        for row, (hist, _, target) in enumerate(answerable):
            s = scores[row]
            seen = [index[h[0]] for h in hist if h[0] in index and h[0] != target] if self.exclude_seen else []
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


def prequential_evaluate(
    model: StreamingModel,
    events: Sequence[Event],
    *,
    k: int = 10,
    window: int = 256,
    max_history: int = 50,
    exclude_seen: bool = True,
    event_weights: dict[str, float] | None = None,
    where: Callable[[Event], bool] | None = None,
    candidates: Collection[str] | None = None,
) -> dict[str, float]:
    """Test-then-train over the whole of ``events`` in windows of ``window`` events; every positive counts
    (or every positive that ``where`` accepts), ranked among ``candidates`` (default: every item the model
    knows). ``seconds``: the time spent ranking, not training."""
    return prequential_evaluate_many(model, events, {"": {"where": where, "candidates": candidates}}, k=k,
                                     window=window, max_history=max_history, exclude_seen=exclude_seen,
                                     event_weights=event_weights)[""]


def prequential_evaluate_many(
    model: StreamingModel,
    events: Sequence[Event],
    views: Mapping[str, Mapping[str, object]],
    *,
    k: int = 10,
    window: int = 256,
    max_history: int = 50,
    exclude_seen: bool = True,
    event_weights: dict[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`prequential_evaluate` for several views of one pass (each view's ``where`` and ``candidates``),
    so the model trains once; one result per view name."""
    evaluators = {name: PrequentialEvaluator(ks=(k,), window=None, per_batch=None, max_users=None,
                                             max_history=max_history, exclude_seen=exclude_seen,
                                             event_weights=event_weights, **view)
                  for name, view in views.items()}
    for lo in range(0, len(events), window):
        chunk = events[lo : lo + window]
        for evaluator in evaluators.values():
            evaluator.observe_and_test(model, chunk)
        model.train_events(chunk)
    out = {}
    for name, evaluator in evaluators.items():
        m = evaluator.metrics()
        out[name] = {f"hr@{k}": m[f"hr@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"], "predictions": len(evaluator.ranks),
                     "seconds": evaluator.seconds}
    return out
