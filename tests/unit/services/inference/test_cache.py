"""The Recommend caches: answers and user vectors keyed by history and model version, bounded, expiring."""

from __future__ import annotations


import numpy as np
import pytest

from services.inference.cache import TtlLruCache
from services.inference.config import CacheConfig, InferenceSection
from services.inference.dataplane import RecommenderDataPlane, RecommendQuery
from services.inference.histories import UserHistoryStore
from services.inference.repository import PRODUCTION, ModelRepository
from tests.unit.services.inference.test_dataplane import make_model
from tests.waiting import wait_for


class CountingEncoder:
    def __init__(self, inner) -> None:
        self.inner = inner
        self.users = 0

    def encode(self, histories, now_ms):
        self.users += len(histories)
        return self.inner.encode(histories, now_ms)


def counted_model(version=1, seed=0):
    model = make_model(version=version, seed=seed)
    model.runtime.encoder = CountingEncoder(model.runtime.encoder)
    return model, model.runtime.encoder


@pytest.fixture
def setup():
    model, encoder = counted_model()
    repo = ModelRepository()
    repo.swap(PRODUCTION, model)
    lookups = []
    plane = RecommenderDataPlane(repo, UserHistoryStore(max_len=50), InferenceSection(max_k=100),
                                 on_cache_lookup=lambda cache, hit: lookups.append((cache, hit)))
    plane.histories.append("u", "i3", "click", 1)
    plane.histories.append("u", "i4", "view", 2)
    return plane, encoder, lookups


def ids(rec):
    return [i.item_id for i in rec.items]


def test_a_repeated_request_is_answered_from_the_cache(setup):
    plane, encoder, lookups = setup
    first = plane.recommend(RecommendQuery("u", k=10))
    assert encoder.users == 1 and lookups == [("results", False), ("user_vectors", False)]
    again = plane.recommend(RecommendQuery("u", k=10))
    assert again == first and encoder.users == 1 and lookups[-1] == ("results", True)
    assert plane.result_cache.hit_ratio() == 0.5


def test_a_new_event_of_the_user_is_never_answered_from_the_cache(setup):
    plane, encoder, _ = setup
    first = plane.recommend(RecommendQuery("u", k=10))
    top = first.items[0].item_id
    plane.histories.append("u", top, "click", 3)  # the user acts on the first recommendation
    after = plane.recommend(RecommendQuery("u", k=10))
    assert encoder.users == 2 and top not in ids(after)
    model = plane.repository.get()
    query = model.item_vectors[[3, 4, model.row_of[top]]].mean(axis=0)
    scores = model.item_vectors @ query
    scores[[3, 4, 5, model.row_of[top]]] = -np.inf
    assert ids(after) == [f"i{j}" for j in np.argsort(-scores)[:10]]


def test_another_user_or_a_snapshot_merge_does_not_reuse_an_answer(setup):
    plane, encoder, _ = setup
    plane.recommend(RecommendQuery("u", k=10))
    plane.histories.merge_snapshot({"u": [("i9", "click", 50)]})  # newer snapshot replaces the history
    rec = plane.recommend(RecommendQuery("u", k=10))
    model = plane.repository.get()
    scores = model.item_vectors @ model.item_vectors[9]
    scores[[5, 9]] = -np.inf
    assert encoder.users == 2 and ids(rec) == [f"i{j}" for j in np.argsort(-scores)[:10]]


def test_a_model_swap_is_never_answered_from_the_old_models_cache(setup):
    plane, _, _ = setup
    plane.recommend(RecommendQuery("u", k=10))
    new_model, new_encoder = counted_model(version=2, seed=7)
    plane.repository.swap(PRODUCTION, new_model)
    rec = plane.recommend(RecommendQuery("u", k=10))
    assert rec.model_version == 2 and new_encoder.users == 1


def test_other_options_reuse_the_user_vector_and_context_bypasses_both(setup):
    plane, encoder, lookups = setup
    plane.recommend(RecommendQuery("u", k=10))
    five = plane.recommend(RecommendQuery("u", k=5, categories=["even"]))
    assert encoder.users == 1 and len(five.items) == 5 and lookups[-1] == ("user_vectors", True)
    assert all(i.categories == ("even",) for i in five.items)
    excluded = plane.recommend(RecommendQuery("u", k=10, exclude_item_ids=[ids(five)[0]]))
    assert ids(five)[0] not in ids(excluded) and encoder.users == 1
    n = len(lookups)
    ctx = plane.recommend(RecommendQuery("u", k=10, context_item_ids=["i8"]))
    assert encoder.users == 2 and len(lookups) == n and "i8" not in ids(ctx)


def test_the_caches_can_be_turned_off():
    model, encoder = counted_model()
    repo = ModelRepository()
    repo.swap(PRODUCTION, model)
    plane = RecommenderDataPlane(repo, UserHistoryStore(), InferenceSection(cache=CacheConfig(max_results=0,
                                                                                              max_user_vectors=0)))
    plane.histories.append("u", "i3", "click", 1)
    for _ in range(3):
        plane.recommend(RecommendQuery("u", k=10))
    assert encoder.users == 3 and len(plane.result_cache) == 0 and len(plane.vector_cache) == 0


def test_ttl_lru_cache_is_bounded_and_expires():
    cache = TtlLruCache(max_entries=2, ttl_s=0.2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    wait_for(lambda: cache.get("a") is None, timeout_s=30, what="the entry to expire")
    assert cache.hits >= 3 and cache.misses >= 2
    off = TtlLruCache(0, 1.0)
    off.put("a", 1)
    assert off.get("a") is None and len(off) == 0 and off.hits == off.misses == 0


def test_cache_config_rejects_nonsense():
    from pydantic import ValidationError

    for bad in ({"max_results": -1}, {"ttl_s": 0}, {"ttl_s": 10**9}):
        with pytest.raises(ValidationError):
            CacheConfig(**bad)
