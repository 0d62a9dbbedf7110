"""Data plane behaviour with a small in-memory model (a mean-of-history-vectors encoder)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout

import grpc
import numpy as np
import pytest

from services.common.errors import InvalidInput, NotFound, NotReady
from services.inference.batcher import EncoderBatcher
from services.inference.config import IndexConfig, InferenceSection
from services.inference.dataplane import (
    DeadlineExceeded,
    RecommenderDataPlane,
    RecommendQuery,
    SimilarQuery,
)
from services.inference.histories import UserHistoryStore
from services.inference.served_model import ItemTableModel, ServedModel
from services.inference.repository import (
    CANARY,
    PRODUCTION,
    ModelRepository,
    user_bucket,
)
from tests.waiting import wait_for


class MeanEncoder:
    """User vector = mean of the vectors of the items in the history."""

    def __init__(self, ids, vectors):
        self.row = {i: r for r, i in enumerate(ids)}
        self.vectors = vectors

    def encode(self, histories, now_ms):
        return np.stack([self.vectors[[self.row[h[0]] for h in hist]].mean(axis=0) for hist in histories])


def make_model(version=1, n=200, dim=8, seed=0, ann_threshold=10**9):
    rng = np.random.default_rng(seed)
    ids = [f"i{j}" for j in range(n)]
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    available = np.ones(n, dtype=bool)
    available[5] = False
    cats = ["even" if j % 2 == 0 else "odd" for j in range(n)]
    runtime = ItemTableModel(name="recommender", encoder=MeanEncoder(ids, vectors), item_ids=ids, item_vectors=vectors,
                             available=available, titles=[f"Item {j}" for j in range(n)], categories=cats,
                             histories={"u1": [("i1", "click", 1000)]})
    model = ServedModel(runtime, version=version, index_config=IndexConfig(ann_threshold=ann_threshold))
    model.warm_up(2)
    return model


@pytest.fixture
def plane():
    repo = ModelRepository()
    store = UserHistoryStore(max_len=50)
    repo.swap(PRODUCTION, make_model())
    return RecommenderDataPlane(repo, store, InferenceSection(max_k=100, max_exclude_items=3))


def test_recommends_nearest_items_and_filters_seen_excluded_unavailable(plane):
    model = plane.repository.get()
    store = plane.histories
    store.append("u", "i3", "click", 1)
    store.append("u", "i4", "view", 2)
    rec = plane.recommend(RecommendQuery("u", k=20, exclude_item_ids=["i7"]))
    ids = [i.item_id for i in rec.items]
    assert rec.source == "model" and rec.model_version == 1 and len(ids) == 20
    assert not {"i3", "i4", "i5", "i7"} & set(ids)
    query = model.item_vectors[[3, 4]].mean(axis=0)
    scores = model.item_vectors @ query
    scores[[3, 4, 5, 7]] = -np.inf
    assert ids == [f"i{j}" for j in np.argsort(-scores)[:20]]
    assert rec.items[0].title.startswith("Item ") and rec.items[0].categories in (("even",), ("odd",))


@pytest.mark.parametrize("top", [0, 4])
@pytest.mark.parametrize("ann_threshold", [10**9, 50])
def test_the_transition_bonus_reranks_exactly_with_every_filter(ann_threshold, top):
    from recmodel.transitions import TransitionRows, TransitionTable

    base = make_model()
    ids = list(base.item_ids)
    rng = np.random.default_rng(1)
    table = TransitionTable(window=3, decay=0.7)
    for _ in range(4000):
        a = int(rng.integers(0, 200))
        table.observe(ids[a], ids[(a + int(rng.integers(1, 12))) % 200])
    rows_table = TransitionRows(**table.to_csr(ids), n_items=200, window=3, decay=0.7, top=top)
    runtime = base.runtime
    runtime.transitions, runtime.transition_weight = rows_table, 2.0
    model = ServedModel(runtime, version=1, index_config=IndexConfig(ann_threshold=ann_threshold, nprobe_fraction=1.0))
    model.warm_up(2)
    repo = ModelRepository()
    repo.swap(PRODUCTION, model)
    plane = RecommenderDataPlane(repo, UserHistoryStore(max_len=50), InferenceSection(max_k=100))
    for item, t in (("i3", 1), ("i40", 2), ("i41", 3)):
        plane.histories.append("u", item, "click", t)
    for categories in ([], ["even"]):
        rec = plane.recommend(RecommendQuery("u", k=10, exclude_item_ids=["i44"], categories=categories))
        query = model.item_vectors[[3, 40, 41]].mean(axis=0)
        never = [3, 40, 41, 44, 5] + (list(range(1, 200, 2)) if categories else [])  # seen, excluded, unavailable
        bonus = rows_table.dense_bonus([3, 40, 41], 200, banned=never)  # the top go to items that may be shown
        scores = model.item_vectors @ query + 2.0 * bonus
        scores[never] = -np.inf
        assert [i.item_id for i in rec.items] == [f"i{j}" for j in np.argsort(-scores, kind="stable")[:10]]
        boosted = sum(bonus[int(i.item_id[1:])] > 0 for i in rec.items)
        assert boosted <= top if top else boosted > 0
        np.testing.assert_allclose([i.score for i in rec.items], np.sort(scores)[::-1][:10], rtol=1e-5)
    if top:
        assert np.count_nonzero(rows_table.dense_bonus([3, 40, 41], 200)) == top


def test_category_filter_and_context_items(plane):
    plane.histories.append("u", "i3", "click", 1)
    rec = plane.recommend(RecommendQuery("u", k=10, categories=["even"], context_item_ids=["i8"]))
    assert all(int(i.item_id[1:]) % 2 == 0 for i in rec.items)
    assert "i8" not in [i.item_id for i in rec.items]


def test_unknown_user_gets_popularity_never_an_error(plane):
    for t, item in enumerate(["i10", "i10", "i10", "i12", "i12", "i14", "i5"]):
        plane.histories.append(f"other{t}", item, "click", 1000 + t)
    time.sleep(0.6)  # ranking is recomputed at most every 0.5 s
    rec = plane.recommend(RecommendQuery("nobody", k=3))
    assert rec.source == "popularity"
    assert [i.item_id for i in rec.items] == ["i10", "i12", "i14"]  # i5 is unavailable
    rec = plane.recommend(RecommendQuery("nobody", k=3, categories=["even"], exclude_item_ids=["i12"]))
    assert [i.item_id for i in rec.items] == ["i10", "i14"]


@pytest.mark.parametrize("query, message", [
    (RecommendQuery("u", k=0), "k must be between 1 and 100"),
    (RecommendQuery("u", k=101), "k must be between 1 and 100"),
    (RecommendQuery("", k=5), "user_id is required"),
    (RecommendQuery("u", k=5, exclude_item_ids=["a", "b", "c", "d"]), "exclude_item_ids: 4 given, at most 3"),
    (RecommendQuery("u", k=5, exclude_item_ids=[""]), "exclude_item_ids: empty id"),
])
def test_invalid_requests_are_rejected_with_a_message(plane, query, message):
    with pytest.raises(InvalidInput, match=message) as info:
        plane.recommend(query)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_deadline_already_spent_is_refused(plane):
    with pytest.raises(DeadlineExceeded):
        plane.recommend(RecommendQuery("u1", k=5), deadline=time.monotonic() - 0.01)


def test_similar_items(plane):
    model = plane.repository.get()
    rec = plane.similar_items(SimilarQuery("i3", k=5))
    scores = model.item_vectors @ model.item_vectors[3]
    scores[[3, 5]] = -np.inf
    assert [i.item_id for i in rec.items] == [f"i{j}" for j in np.argsort(-scores)[:5]]
    with pytest.raises(NotFound):
        plane.similar_items(SimilarQuery("nope", k=5))


def test_no_model_and_no_data_is_not_ready():
    plane = RecommenderDataPlane(ModelRepository(), UserHistoryStore())
    with pytest.raises(NotReady):
        plane.recommend(RecommendQuery("u", k=5))


def test_swap_is_atomic_and_in_flight_model_is_kept(plane):
    repo = plane.repository
    first = repo.for_user("u")
    repo.swap(PRODUCTION, make_model(version=2, seed=1))
    assert first.version == 1 and repo.for_user("u").version == 2
    with pytest.raises(ValueError):
        repo.swap(PRODUCTION, ServedModel(ItemTableModel(name="x", encoder=None, item_ids=["a"], item_vectors=np.ones((1, 8))), version=3))


def test_canary_share_by_stable_user_hash():
    repo = ModelRepository(canary_share=0.3)
    repo.swap(PRODUCTION, make_model(version=1))
    repo.swap(CANARY, make_model(version=2))
    users = [f"user{j}" for j in range(2000)]
    on_canary = [u for u in users if repo.for_user(u).version == 2]
    assert 0.25 < len(on_canary) / len(users) < 0.35
    assert all(user_bucket(u) < 0.3 for u in on_canary)
    assert on_canary == [u for u in users if repo.for_user(u).version == 2]  # stable


def test_batcher_encodes_concurrent_requests_together(plane):
    sizes = []
    batcher = EncoderBatcher(max_batch=16, max_wait_s=0.02, on_batch=sizes.append)
    plane.batcher = batcher
    for u in range(8):
        plane.histories.append(f"b{u}", f"i{u + 10}", "click", 1)
    results = {}

    def call(u):
        results[u] = plane.recommend(RecommendQuery(f"b{u}", k=5))

    threads = [threading.Thread(target=call, args=(u,)) for u in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.stop()
    assert sum(sizes) == 8 and max(sizes) > 1
    plane.batcher = None
    for u in range(8):
        assert [i.item_id for i in results[u].items] == [i.item_id for i in plane.recommend(RecommendQuery(f"b{u}", k=5)).items]


def test_a_batcher_worker_that_dies_is_restarted_and_serves_the_next_requests(plane):
    calls, restarts = [], []

    def on_batch(n):  # injected failure: the first batch's bookkeeping raises, killing the worker
        calls.append(n)
        if len(calls) == 1:
            raise RuntimeError("injected failure")

    batcher = EncoderBatcher(max_batch=16, max_wait_s=0.0, on_batch=on_batch,
                             on_loop_restart=lambda loop, exc: restarts.append((loop, str(exc))))
    plane.batcher = batcher
    plane.histories.append("d1", "i11", "click", 1)
    try:
        # The request in the batch that killed the worker is not answered (it times out) ...
        with pytest.raises(FutureTimeout):
            batcher.encode(plane.repository.get(), plane.histories.get("d1"), 2, timeout_s=0.5)
        wait_for(lambda: restarts, 60, "the worker restart")
        assert restarts == [("encoder-batcher", "injected failure")]
        # ... the ones after it are, by the restarted worker.
        assert len(plane.recommend(RecommendQuery("d1", k=5)).items) == 5
    finally:
        batcher.stop()
        plane.batcher = None
