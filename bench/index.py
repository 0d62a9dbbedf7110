"""Exact vs approximate retrieval: recall@k and single-query latency at several catalog sizes.

``streamrec bench index [--items 10000 1000000] [--dim 64] [--k 10] [--queries 200]`` prints one JSON
line with, per catalog size and backend: build seconds, p50/p99 query latency (one query at a time, as
Recommend issues them) and recall@k against exact search.

By default (``--queries-from model``) the catalog and queries are a trained model's (``bench.catalog``):
the item vectors of a small real artifact grown to each size by drawing new items near trained ones,
searched with the user vectors its encoder produces for its users' histories (``--dim`` gives way
to the artifact's, which is reported). ``--queries-from mixture`` uses a unit-norm Gaussian mixture
for items and queries (``--random-norms`` keeps item norms between 0.5 and 1.5, where inner-product
HNSW does much worse).
Backends: numpy exact (matmul + argpartition), usearch HNSW, hnswlib HNSW, faiss IVF-Flat and
faiss HNSW (the last three only when installed: ``pip install hnswlib faiss-cpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from services.common.process import available_cpus
from services.inference.config import IndexConfig
from recmodel.ivf import auto_nlist
from services.inference.retrieval import build_ivf


def clustered_vectors(n: int, dim: int, seed: int, n_clusters: int = 512, unit_norm: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    step = 200_000
    for lo in range(0, n, step):
        m = min(step, n - lo)
        which = rng.integers(0, n_clusters, m)
        out[lo:lo + m] = centers[which] + 0.6 * rng.standard_normal((m, dim)).astype(np.float32)
    if unit_norm:
        out /= np.linalg.norm(out, axis=1, keepdims=True)
    else:
        out *= rng.uniform(0.5, 1.5, (n, 1)).astype(np.float32)
    return out


def _latencies(search, queries: np.ndarray, k: int) -> tuple[list[np.ndarray], np.ndarray]:
    for q in queries[:5]:
        search(q, k)
    results, times = [], []
    for q in queries:
        t = time.perf_counter()
        results.append(np.asarray(search(q, k)))
        times.append(time.perf_counter() - t)
    return results, np.array(times)


def _recall(found: list[np.ndarray], truth: list[np.ndarray], k: int) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def backends(vectors: np.ndarray, args) -> dict:
    """name -> builder returning a search(q, k) -> ids function."""
    threads = available_cpus()  # a pod's CPU limit, not the node's cores
    out = {}

    def exact():
        def search(q, k):
            s = vectors @ q
            top = np.argpartition(-s, k)[:k]
            return top[np.argsort(-s[top])]
        return search
    out["exact_numpy"] = exact

    def usearch_hnsw():
        from usearch.index import Index
        ix = Index(ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=args.m,
                   expansion_add=args.ef_construction, expansion_search=args.ef)
        ix.add(np.arange(len(vectors)), vectors, threads=threads)
        return lambda q, k: ix.search(q, k, threads=1).keys
    out["usearch_hnsw"] = usearch_hnsw

    try:
        import hnswlib

        def hnswlib_hnsw():
            ix = hnswlib.Index(space="ip", dim=vectors.shape[1])
            ix.init_index(max_elements=len(vectors), ef_construction=args.ef_construction, M=args.m)
            ix.add_items(vectors, np.arange(len(vectors)), num_threads=threads)
            ix.set_ef(args.ef)
            ix.set_num_threads(1)
            return lambda q, k: ix.knn_query(q, k)[0][0]
        out["hnswlib_hnsw"] = hnswlib_hnsw
    except ImportError:
        pass
    try:
        import faiss

        def faiss_ivf():  # what the inference service builds (services.inference.retrieval)
            nlist = auto_nlist(len(vectors), args.ivf_lists_per_sqrt)
            ix = build_ivf(vectors, np.arange(len(vectors), dtype=np.int64), nlist, args.ivf_nprobe_fraction)
            return lambda q, k: ix.search(q[None, :], k)[1][0]
        out["faiss_ivf"] = faiss_ivf  # the served index: float16 lists (services.inference.retrieval.build_ivf)

        def faiss_hnsw():
            ix = faiss.IndexHNSWFlat(vectors.shape[1], args.m, faiss.METRIC_INNER_PRODUCT)
            ix.hnsw.efConstruction = args.ef_construction
            ix.add(vectors)
            ix.hnsw.efSearch = args.ef
            return lambda q, k: ix.search(q[None, :], k)[1][0]
        out["faiss_hnsw"] = faiss_hnsw
    except ImportError:
        pass
    return out


def catalog_and_queries(n: int, args) -> tuple[np.ndarray, np.ndarray]:
    if args.queries_from == "mixture":
        return (clustered_vectors(n, args.dim, seed=1, unit_norm=not args.random_norms),
                clustered_vectors(args.queries, args.dim, seed=2, unit_norm=not args.random_norms))
    from bench.catalog import grow_catalog, trained_artifact, user_queries
    from recmodel.serving import ArtifactModel

    model = ArtifactModel.load(trained_artifact(args.artifact), providers=["CPUExecutionProvider"])
    return grow_catalog(model.item_vectors, n), user_queries(model, args.queries)


def run(n: int, args) -> dict:
    vectors, queries = catalog_and_queries(n, args)
    result = {}
    truth = None
    for name, build in backends(vectors, args).items():
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        try:
            search = build()
        except Exception as exc:  # noqa: BLE001 - a backend that fails is reported, not fatal
            result[name] = {"error": str(exc)}
            continue
        build_s = time.perf_counter() - t
        found, times = _latencies(search, queries, args.k)
        if name == "exact_numpy":
            truth = found
        result[name] = {
            "build_s": round(build_s, 3),
            "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 4),
            "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 4),
            "recall_at_k": round(_recall(found, truth, args.k), 4) if truth is not None else None,
        }
        print(f"# n={n} {name}: {result[name]}", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamrec bench index", description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 1_000_000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--m", type=int, default=16, help="HNSW connectivity")
    p.add_argument("--ef-construction", type=int, default=128)
    p.add_argument("--ef", type=int, default=128, help="HNSW search breadth")
    p.add_argument("--ivf-lists-per-sqrt", type=float, default=IndexConfig().lists_per_sqrt,
                   help="faiss IVF: nlist = this * sqrt(items)")
    p.add_argument("--ivf-nprobe-fraction", type=float, default=IndexConfig().nprobe_fraction,
                   help="faiss IVF: share of the lists scanned per query")
    p.add_argument("--queries-from", choices=("model", "mixture"), default="model",
                   help="a trained model's items and user vectors (default), or a Gaussian mixture")
    p.add_argument("--artifact", type=Path, default=None, help="the trained artifact (built when missing)")
    p.add_argument("--random-norms", action="store_true", help="mixture: item norms in [0.5, 1.5] instead of 1")
    p.add_argument("--only", nargs="*", default=None, help="backends to run (exact_numpy always first)")
    args = p.parse_args(argv)
    if args.only:
        args.only = set(args.only) | {"exact_numpy"}
    if args.queries_from == "model":
        from bench.catalog import DEFAULT_ARTIFACT, trained_artifact
        from recmodel.artifact import read_manifest

        args.artifact = args.artifact or DEFAULT_ARTIFACT
        args.dim = read_manifest(trained_artifact(args.artifact)).dim
    results = {str(n): run(n, args) for n in args.items}
    out = {"bench": "index", "queries_from": args.queries_from, "dim": args.dim, "k": args.k, "queries": args.queries, "cpus": os.cpu_count(),
           "hnsw": {"m": args.m, "ef_construction": args.ef_construction, "ef": args.ef},
           "ivf": {"lists_per_sqrt": args.ivf_lists_per_sqrt, "nprobe_fraction": args.ivf_nprobe_fraction},
           "results": results}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
