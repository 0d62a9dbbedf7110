"""Exact and approximate (IVF) retrieval agree where it matters: top-k, bans, availability, categories."""

from __future__ import annotations

import numpy as np

from services.inference.config import IndexConfig
from services.inference.retrieval import ItemRetriever


def _data(n=3000, dim=16):
    """Unit-norm, clustered vectors, like the item and user vectors recmodel exports."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, dim))

    def draw(m):
        x = centers[rng.integers(0, len(centers), m)] + 0.5 * rng.standard_normal((m, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    v = draw(n)
    avail = rng.random(n) > 0.1
    return v, avail, draw(20)


def test_exact_top_k_respects_bans_and_availability():
    v, avail, queries = _data()
    r = ItemRetriever(v, avail, IndexConfig(ann_threshold=10**9))
    assert r.kind == "exact"
    for q in queries:
        rows, scores = r.search(q, 10, banned=np.array([0, 1, 2]))
        s = v @ q
        s[~avail] = -np.inf
        s[[0, 1, 2]] = -np.inf
        assert rows.tolist() == np.argsort(-s)[:10].tolist()
        assert np.allclose(scores, s[rows])


def test_ann_has_high_recall_and_never_returns_banned_or_unavailable(tmp_path):
    v, avail, queries = _data()
    cache = tmp_path / "ix.faiss"
    r = ItemRetriever(v, avail, IndexConfig(ann_threshold=100), cache_path=cache)
    assert r.kind == "ivf" and cache.exists()
    exact = ItemRetriever(v, avail, IndexConfig(ann_threshold=10**9))
    hits = 0
    for q in queries:
        banned = exact.search(q, 3)[0]
        rows, _ = r.search(q, 10, banned=banned)
        assert len(rows) == 10 and avail[rows].all() and not set(banned) & set(rows.tolist())
        hits += len(set(rows.tolist()) & set(exact.search(q, 10, banned=banned)[0].tolist()))
    assert hits / (10 * len(queries)) > 0.9
    again = ItemRetriever(v, avail, IndexConfig(ann_threshold=100), cache_path=cache)  # loads the cached index
    assert again.search(queries[0], 5)[0].tolist() == r.search(queries[0], 5)[0].tolist()


def test_subset_search_is_exact_within_the_subset():
    v, avail, queries = _data()
    r = ItemRetriever(v, avail, IndexConfig(ann_threshold=100))
    subset = np.arange(0, 3000, 7)
    rows, _ = r.search(queries[0], 5, subset=subset)
    sub = subset[avail[subset]]
    assert rows.tolist() == sub[np.argsort(-(v[sub] @ queries[0]))[:5]].tolist()


def test_a_cached_index_searches_with_the_configured_nprobe(tmp_path):
    v, avail, _ = _data()
    cache = tmp_path / "ix.faiss"
    built = ItemRetriever(v, avail, IndexConfig(ann_threshold=100, nprobe_fraction=0.05), cache_path=cache)
    loaded = ItemRetriever(v, avail, IndexConfig(ann_threshold=100, nprobe_fraction=1.0), cache_path=cache)
    assert built._ann.nprobe < loaded._ann.nprobe == loaded._ann.nlist  # nprobe is a search setting, not the file's


def test_a_cached_index_of_another_shape_is_rebuilt_not_reused(tmp_path):
    v, avail, queries = _data()
    cache = tmp_path / "ix.faiss"
    coarse = ItemRetriever(v, avail, IndexConfig(ann_threshold=100, nlist=16), cache_path=cache)
    finer = ItemRetriever(v, avail, IndexConfig(ann_threshold=100, nlist=32, nprobe_fraction=1.0), cache_path=cache)
    assert coarse._ann.nlist == 16 and finer._ann.nlist == 32
    assert ItemRetriever(v, avail, IndexConfig(ann_threshold=100, nlist=32), cache_path=cache)._ann.nlist == 32
    exact = ItemRetriever(v, avail, IndexConfig(ann_threshold=10**9))
    assert finer.search(queries[0], 5)[0].tolist() == exact.search(queries[0], 5)[0].tolist()


def test_a_shipped_quantizer_gives_the_index_a_server_would_build(caplog):
    from recmodel.ivf import quantize_items

    v, avail, queries = _data()
    config = IndexConfig(ann_threshold=100, nprobe_fraction=0.2)
    centroids, lists = quantize_items(v, avail, config.lists_per_sqrt)
    built = ItemRetriever(v, avail, config)
    shipped = ItemRetriever(v, avail, config, quantizer=(centroids, lists))
    assert shipped.kind == "ivf" and shipped._ann.nlist == built._ann.nlist
    for q in queries:
        assert built.search(q, 10, banned=[3, 4])[0].tolist() == shipped.search(q, 10, banned=[3, 4])[0].tolist()

    # One for other index settings (or another catalog) is not used: the server builds its own.
    with caplog.at_level("INFO"):
        other = ItemRetriever(v, avail, IndexConfig(ann_threshold=100, nlist=16), quantizer=(centroids, lists))
    assert other._ann.nlist == 16 and "does not fit" in caplog.text
    bad = ItemRetriever(v, avail, config, quantizer=(centroids, np.full(len(v), len(centroids), dtype=np.int32)))
    assert bad.search(queries[0], 10)[0].tolist() == built.search(queries[0], 10)[0].tolist()


def test_one_search_thread_finds_what_the_default_threads_find():
    import faiss
    from threadpoolctl import threadpool_info, threadpool_limits

    from services.inference.retrieval import set_search_threads

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    v, avail, queries = _data()
    ann = ItemRetriever(v, avail, IndexConfig(ann_threshold=100))
    exact = ItemRetriever(v, avail, IndexConfig(ann_threshold=10**9))
    before, blas_before = faiss.omp_get_max_threads(), max(blas_threads())
    try:
        found = [(ann.search(q, 10)[0].tolist(), exact.search(q, 10)[0].tolist()) for q in queries]
        set_search_threads(IndexConfig().search_threads)
        # Both pools a search can use: faiss's (IVF) and numpy's BLAS (exact search's product).
        assert faiss.omp_get_max_threads() == 1 and blas_threads() == {1}
        assert [(ann.search(q, 10)[0].tolist(), exact.search(q, 10)[0].tolist()) for q in queries] == found
    finally:
        faiss.omp_set_num_threads(before)
        threadpool_limits(limits=blas_before, user_api="blas")


def test_ann_candidates_come_back_in_exact_score_order_though_the_index_holds_float16():
    v, avail, queries = _data()
    r = ItemRetriever(v, avail, IndexConfig(ann_threshold=100, nprobe_fraction=1.0))
    exact = ItemRetriever(v, avail, IndexConfig(ann_threshold=10**9))
    for q in queries:
        rows, scores = r.search(q, 10, banned=[5])
        assert np.allclose(scores, v[rows] @ q, rtol=1e-6, atol=1e-7) and (np.diff(scores) <= 0).all()
        assert rows.tolist() == exact.search(q, 10, banned=[5])[0].tolist()  # every list scanned: the exact top 10


def test_a_cached_float32_index_from_before_is_rebuilt_not_reused(tmp_path):
    import faiss

    v, avail, _ = _data()
    rows = np.flatnonzero(avail)
    old = faiss.IndexIVFFlat(faiss.IndexFlatIP(v.shape[1]), v.shape[1], 27, faiss.METRIC_INNER_PRODUCT)
    old.train(v[rows])
    old.add_with_ids(v[rows], rows.astype(np.int64))
    cache = tmp_path / "ix.faiss"
    faiss.write_index(old, str(cache))
    r = ItemRetriever(v, avail, IndexConfig(ann_threshold=100, nlist=27), cache_path=cache)
    assert isinstance(r._ann, faiss.IndexIVFScalarQuantizer)
    assert isinstance(faiss.read_index(str(cache)), faiss.IndexIVFScalarQuantizer), "the cache now holds the new index"
