"""Transport-neutral Recommend / SimilarItems: validation, cold start, retrieval and filtering.

The gRPC servicer only converts messages; everything a client can observe is decided here.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Sequence

import grpc
import numpy as np

from services.common.errors import InvalidInput, NotFound, NotReady, StreamrecError
from services.inference.batcher import EncoderBatcher
from services.inference.cache import TtlLruCache
from services.inference.config import InferenceSection
from services.inference.histories import UserHistoryStore
from services.inference.served_model import ServedModel
from services.inference.repository import ModelRepository


class DeadlineExceeded(StreamrecError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    title: str = ""
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recommendation:
    items: list[ScoredItem]
    model_name: str
    model_version: int
    source: str  # "model" or "popularity"
    model_delta: int = 0  # the weight delta of model_version served (0: none)


@dataclass(frozen=True)
class RecommendQuery:
    user_id: str
    k: int = 10
    context_item_ids: Sequence[str] = field(default_factory=tuple)
    exclude_item_ids: Sequence[str] = field(default_factory=tuple)
    categories: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class SimilarQuery:
    item_id: str
    k: int = 10
    exclude_item_ids: Sequence[str] = field(default_factory=tuple)
    categories: Sequence[str] = field(default_factory=tuple)


class RecommenderDataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        histories: UserHistoryStore,
        settings: InferenceSection = InferenceSection(),
        batcher: EncoderBatcher | None = None,
        on_cold_start=None,
        on_cache_lookup=None,
    ) -> None:
        self.repository = repository
        self.histories = histories
        self.settings = settings
        self.batcher = batcher
        self._on_cold_start = on_cold_start
        c = settings.cache

        def counter(name: str):
            return functools.partial(on_cache_lookup, name) if on_cache_lookup else None

        self.result_cache: TtlLruCache[Recommendation] = TtlLruCache(c.max_results, c.ttl_s, counter("results"))
        self.vector_cache: TtlLruCache[np.ndarray] = TtlLruCache(c.max_user_vectors, c.ttl_s, counter("user_vectors"))

    # ------------------------------------------------------------------ validation
    def _check_ids(self, what: str, ids: Sequence[str], limit: int) -> None:
        if len(ids) > limit:
            raise InvalidInput(f"{what}: {len(ids)} given, at most {limit} allowed")
        for i in ids:
            if not i:
                raise InvalidInput(f"{what}: empty id")
            if len(i) > self.settings.max_id_length:
                raise InvalidInput(f"{what}: id longer than {self.settings.max_id_length} characters")

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.settings.max_k:
            raise InvalidInput(f"k must be between 1 and {self.settings.max_k}, got {k}")

    def _check_deadline(self, deadline: float | None) -> None:
        if deadline is not None and deadline - time.monotonic() < self.settings.min_time_remaining_ms / 1000.0:
            raise DeadlineExceeded("deadline too close to answer in time")

    # ------------------------------------------------------------------ Recommend
    def recommend(self, q: RecommendQuery, deadline: float | None = None) -> Recommendation:
        s = self.settings
        if not q.user_id:
            raise InvalidInput("user_id is required")
        if len(q.user_id) > s.max_id_length:
            raise InvalidInput(f"user_id longer than {s.max_id_length} characters")
        self._check_k(q.k)
        self._check_ids("context_item_ids", q.context_item_ids, s.max_context_items)
        self._check_ids("exclude_item_ids", q.exclude_item_ids, s.max_exclude_items)
        self._check_ids("categories", q.categories, s.max_categories)
        self._check_deadline(deadline)

        model = self.repository.for_user(q.user_id)
        # Context items are this request's alone: such answers are neither cached nor taken from the cache.
        cacheable = model is not None and not q.context_item_ids
        if cacheable:
            cached = self.result_cache.get(self._result_key(q, model, self.histories.version(q.user_id)))
            if cached is not None:
                return cached
        now_ms = int(time.time() * 1000)
        history, history_version = self.histories.get_versioned(q.user_id)
        user_key = (q.user_id, history_version, model.name, model.version, model.delta) if cacheable else None
        if q.context_item_ids:
            history = history + [(i, "view", now_ms) for i in q.context_item_ids]
        seen = {h[0] for h in history}
        if model is None:
            return self._popularity(None, q, seen)
        known = [h for h in history if h[0] in model.row_of]
        if not known:
            return self._popularity(model, q, seen)

        user_vec = self.vector_cache.get(user_key) if user_key is not None else None
        if user_vec is None:
            user_vec = self._encode(model, known, now_ms, deadline)
            if user_key is not None:
                self.vector_cache.put(user_key, user_vec)
        self._check_deadline(deadline)
        banned = self._rows(model, seen | set(q.exclude_item_ids))
        subset = model.category_rows(q.categories) if q.categories else None
        rows, scores = model.retriever.search(user_vec, q.k, banned, subset)
        rows, scores = model.rerank_with_transitions(known, user_vec, rows, scores, q.k, banned, subset)
        answer = Recommendation(self._items(model, rows, scores), model.name, model.version, "model", model.delta)
        if cacheable:
            self.result_cache.put(self._result_key(q, model, history_version), answer)
        return answer

    @staticmethod
    def _result_key(q: RecommendQuery, model: ServedModel, history_version: int) -> tuple:
        return (q.user_id, history_version, model.name, model.version, model.delta, q.k, frozenset(q.exclude_item_ids),
                tuple(q.categories))

    def _encode(self, model: ServedModel, known: list, now_ms: int, deadline: float | None) -> np.ndarray:
        if self.batcher is None:
            return model.encode([known], [now_ms])[0]
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return self.batcher.encode(model, known, now_ms, timeout_s=timeout)
        except TimeoutError as exc:
            raise DeadlineExceeded("deadline exceeded while encoding the user") from exc

    @staticmethod
    def _rows(model: ServedModel, ids) -> np.ndarray:
        row_of = model.row_of
        return np.array([row_of[i] for i in ids if i in row_of], dtype=np.int64)

    @staticmethod
    def _items(model: ServedModel, rows, scores) -> list[ScoredItem]:
        return [ScoredItem(model.item_ids[r], float(sc), model.titles[r], model.categories[r])
                for r, sc in zip(rows.tolist(), scores.tolist())]

    def _popularity(self, model: ServedModel | None, q: RecommendQuery, seen: set[str]) -> Recommendation:
        """Cold start: recent popularity, restricted to the requested categories, never an error."""
        if self._on_cold_start:
            self._on_cold_start()
        banned = seen | set(q.exclude_item_ids)
        wanted = set(q.categories)
        out: list[ScoredItem] = []
        for item_id, score in self.histories.popularity.ranking():
            if item_id in banned:
                continue
            if model is not None:
                row = model.row_of.get(item_id)
                if row is None or not model.available[row]:
                    continue
                cats = model.categories[row]
                if wanted and not wanted.intersection(cats):
                    continue
                out.append(ScoredItem(item_id, score, model.titles[row], cats))
            else:
                if wanted:
                    continue  # categories are known only from a model's item table
                out.append(ScoredItem(item_id, score))
            if len(out) == q.k:
                break
        if model is None and not out:
            raise NotReady("no model loaded yet and no popularity data")
        return Recommendation(out, model.name if model else "", model.version if model else 0, "popularity")

    # ------------------------------------------------------------------ SimilarItems
    def similar_items(self, q: SimilarQuery, deadline: float | None = None) -> Recommendation:
        s = self.settings
        if not q.item_id:
            raise InvalidInput("item_id is required")
        self._check_ids("item_id", [q.item_id], 1)
        self._check_k(q.k)
        self._check_ids("exclude_item_ids", q.exclude_item_ids, s.max_exclude_items)
        self._check_ids("categories", q.categories, s.max_categories)
        self._check_deadline(deadline)
        model = self.repository.get()
        if model is None:
            raise NotReady("no model loaded yet")
        row = model.row_of.get(q.item_id)
        if row is None:
            raise NotFound(f"item {q.item_id!r} is not in model version {model.version}")
        banned = self._rows(model, set(q.exclude_item_ids) | {q.item_id})
        subset = model.category_rows(q.categories) if q.categories else None
        rows, scores = model.retriever.search(model.item_vectors[row], q.k, banned, subset)
        return Recommendation(self._items(model, rows, scores), model.name, model.version, "model", model.delta)
