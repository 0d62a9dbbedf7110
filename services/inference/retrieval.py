"""Top-k retrieval over a model's item vectors by inner product.

Exact search (one matmul + argpartition) below ``ann_threshold`` items; above it a faiss IVF index
over the available items, its vectors stored as float16 (half the memory a query scans), queried with
oversampling so that filtering seen/excluded items still leaves k, and the candidates rescored exactly.
Category-filtered queries search exactly over the category's items (usually a small share of the
catalog), so they never miss items an unfiltered ANN would have ranked too low.
The threshold comes from ``streamrec bench index`` (see bench/index.py).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from recmodel.arrays import member_mask
from recmodel.ivf import auto_nlist, train_centroids
from services.inference.config import IndexConfig

logger = logging.getLogger(__name__)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest finite scores, best first."""
    k = min(k, int(np.isfinite(scores).sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(len(scores))
    return part[np.argsort(-scores[part], kind="stable")]


def set_search_threads(n: int) -> None:
    """Threads one search may use in this process (``inference.index.search_threads``): faiss's OpenMP threads,
    and numpy's BLAS pool, which runs exact search's matrix-vector product.

    The server answers from many gRPC threads at once. With BLAS's default (a thread per core), every
    concurrent product asked the same pool for every core, and the threads waited on each other: at 100,000
    items (exact search), concurrency 32, 2 cores, a Recommend took 42 ms of server CPU, 1.9-2.1 ms with one.
    """
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")  # as a call, not a context: the limit stays for the process


def nprobe_for(nlist: int, nprobe_fraction: float) -> int:
    """Inverted lists one query scans."""
    return max(1, int(round(nlist * nprobe_fraction)))


def build_ivf(vectors: np.ndarray, ids: np.ndarray, nlist: int, nprobe_fraction: float,
              quantizer: tuple[np.ndarray, np.ndarray] | None = None):
    """A faiss IVF inner-product index over ``vectors`` (labelled ``ids``) scanning ``nprobe_fraction`` of
    its lists per query. The centroids are trained on 50 points per list (more only slows the build).

    The lists hold the vectors as float16: a query is bound by the memory it scans, and half of it takes
    about half the time (1M items, dim 32, 25 of 500 lists, one thread: 0.63 ms against 1.17 for float32),
    while the candidates, rescored exactly (``ItemRetriever``), keep the same top 10.

    ``quantizer``: (centroids, list of each vector) shipped in the artifact (``recmodel.ivf``). Nothing is
    then trained or searched: the vectors are only filed into their lists, for the same index."""
    import faiss

    dim = vectors.shape[1]
    centroids, lists = quantizer if quantizer is not None else (train_centroids(vectors, nlist), None)
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT, False)  # float16 codes, nothing to train
    index.quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    index.is_trained = True
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    labels = np.ascontiguousarray(ids, dtype=np.int64)
    if lists is None:
        index.add_with_ids(x, labels)
    else:
        lists = np.ascontiguousarray(lists, dtype=np.int64)
        index.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(labels), faiss.swig_ptr(lists))
    index.nprobe = nprobe_for(nlist, nprobe_fraction)
    return index


class ItemRetriever:
    """Inner-product top-k over ``vectors`` honouring availability, bans and category subsets."""

    def __init__(
        self,
        vectors: np.ndarray,
        available: np.ndarray,
        config: IndexConfig = IndexConfig(),
        cache_path: str | Path | None = None,
        quantizer: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.available = np.asarray(available, dtype=bool)
        self.config = config
        self._unavailable = np.flatnonzero(~self.available)
        self._available_rows = np.flatnonzero(self.available)
        self._ann = None
        if len(self._available_rows) >= config.ann_threshold and len(self._available_rows) > 0:
            self._ann = self._build_ann(cache_path, quantizer)
        self.kind = "ivf" if self._ann is not None else "exact"

    def __len__(self) -> int:
        return len(self.vectors)

    def with_vectors(self, vectors: np.ndarray) -> "ItemRetriever":
        """The same rows with new vectors (a weight delta's): exact search and the exact rescoring of ANN
        candidates use them at once; the IVF index is shared, so candidates come from the lists (and the
        float16 codes) of the version the index was built for until the next full version."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != self.vectors.shape:
            raise ValueError(f"vectors {vectors.shape} do not replace {self.vectors.shape}")
        new = copy.copy(self)
        new.vectors = vectors
        return new

    def _build_ann(self, cache_path: str | Path | None, quantizer: tuple[np.ndarray, np.ndarray] | None):
        import faiss

        c = self.config
        rows = self._available_rows
        nlist = c.nlist or auto_nlist(len(rows), c.lists_per_sqrt)
        if cache_path is not None and Path(cache_path).exists():
            try:
                index = faiss.read_index(str(cache_path))
                if isinstance(index, faiss.IndexIVFScalarQuantizer) and index.ntotal == len(rows) and index.nlist == nlist:
                    logger.info("loaded ANN index from cache", extra={"path": str(cache_path), "items": index.ntotal})
                    index.nprobe = nprobe_for(index.nlist, c.nprobe_fraction)  # a search setting: the config's, not the file's
                    return index
            except Exception:  # noqa: BLE001 - a bad cache file is rebuilt, never fatal
                logger.warning("ANN index cache unreadable; rebuilding", extra={"path": str(cache_path)})
        shipped = self._shipped(quantizer, nlist)
        if shipped is not None:  # filing the vectors into the shipped lists is cheaper than reading a cache
            return build_ivf(self.vectors[rows], rows.astype(np.int64), nlist, c.nprobe_fraction,
                             (shipped[0], shipped[1][rows]))
        index = build_ivf(self.vectors[rows], rows.astype(np.int64), nlist, c.nprobe_fraction)
        if cache_path is not None:
            tmp = f"{cache_path}.tmp{os.getpid()}"
            faiss.write_index(index, tmp)
            os.replace(tmp, cache_path)
        return index

    def _shipped(self, quantizer, nlist: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The artifact's quantizer when it fits this catalog and this server's index settings, else None."""
        if quantizer is None:
            return None
        centroids, lists = quantizer
        fits = (centroids.shape == (nlist, self.vectors.shape[1]) and lists.shape == (len(self.vectors),)
                and (len(lists) == 0 or (int(lists.min()) >= 0 and int(lists.max()) < nlist)))
        if not fits:
            logger.info("the artifact's IVF quantizer does not fit this server's index settings; building one",
                        extra={"shipped_lists": int(centroids.shape[0]), "lists": nlist})
            return None
        return centroids, lists

    def search(
        self,
        query: np.ndarray,
        k: int,
        banned: Iterable[int] = (),
        subset: np.ndarray | None = None,
        *,
        exact: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the best ``k`` available rows not in ``banned`` (within ``subset`` if given);
        ``exact`` skips the ANN index (the reference its recall is measured against)."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        banned = np.fromiter(banned, dtype=np.int64) if not isinstance(banned, np.ndarray) else banned
        if subset is not None:
            subset = subset[self.available[subset]]
            if len(banned):
                subset = subset[~member_mask(subset, banned)]
            scores = self.vectors[subset] @ query
            top = _top(scores, k)
            return subset[top], scores[top]
        if self._ann is not None and not exact:
            found = self._search_ann(query, k, banned)
            if found is not None:
                return found
        scores = self.vectors @ query
        scores[self._unavailable] = -np.inf
        if len(banned):
            scores[banned] = -np.inf
        top = _top(scores, k)
        return top, scores[top]

    def _search_ann(self, query: np.ndarray, k: int, banned: np.ndarray):
        n = len(self._available_rows)
        want = min(n, int((k + len(banned)) * self.config.oversample) + 8)
        while True:
            _, ids = self._ann.search(query[None, :], want)
            rows = ids[0][ids[0] >= 0]
            if len(banned):
                rows = rows[~member_mask(rows, banned)]
            if len(rows) >= k or want >= n:
                scores = self.vectors[rows] @ query  # exact: the index ranks by float16 vectors
                top = _top(scores, k)
                return rows[top], scores[top]
            if want * 4 > n // 4:
                return None  # asking for a large share of the catalog: exact search is cheaper
            want *= 4
