"""The catalog and queries that the retrieval and serving benchmarks search: a trained model's.

A small real artifact is trained on the synthetic stream (``trained_artifact``). Its item vectors are
grown to the catalog size asked for by drawing each new item near a trained one (``grow_catalog``):
the new catalog keeps the trained items' clusters and unit norm, as a large catalog of the same kind
of items would. Queries are the user vectors the artifact's encoder produces for its users' histories
(``user_queries``), so an index is judged on the queries Recommend really issues.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEFAULT_ARTIFACT = Path(os.environ.get("STREAMREC_BENCH_ARTIFACT", "/tmp/streamrec-bench/artifact"))


def trained_artifact(out_dir: Path = DEFAULT_ARTIFACT, dim: int = 32, seed: int = 0) -> Path:
    """A small real artifact (a few thousand synthetic events trained on CPU), built once per directory."""
    if (out_dir / "manifest.json").exists():
        return out_dir
    from recmodel.data import SyntheticStream
    from recmodel.export import export_artifact
    from recmodel.text import HashingTextEncoder
    from recmodel.train import IncrementalTrainer

    stream = SyntheticStream(seed=seed, n_users=300, n_items=600, n_events=6000)
    trainer = IncrementalTrainer(dim=dim, max_len=20, capacity=2000, text_encoder=HashingTextEncoder(32),
                                 device="cpu", seed=seed, batch_size=256, n_random_negatives=64)
    trainer.upsert_items(stream.items())
    trainer.train_events(list(stream.events()))
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    export_artifact(trainer, tmp, model_name="recommender", training_offsets={}, metrics={})
    tmp.rename(out_dir)
    return out_dir


def grow_catalog(vectors: np.ndarray, n: int, seed: int = 1, spread: float = 0.5) -> np.ndarray:
    """``vectors`` followed by ``n - len(vectors)`` new rows, each a random trained row plus Gaussian noise
    of ``spread`` times the rows' per-coordinate spread, brought back to that row's norm."""
    vectors = np.asarray(vectors, dtype=np.float32)
    extra = n - len(vectors)
    if extra <= 0:
        return vectors[:n]
    rng = np.random.default_rng(seed)
    sigma = spread * float(vectors.std(axis=0).mean())
    out = np.empty((n, vectors.shape[1]), dtype=np.float32)
    out[: len(vectors)] = vectors
    step = 200_000
    for lo in range(len(vectors), n, step):
        hi = min(n, lo + step)
        src = vectors[rng.integers(0, len(vectors), hi - lo)]
        new = src + sigma * rng.standard_normal(src.shape).astype(np.float32)
        new *= (np.linalg.norm(src, axis=1, keepdims=True) / np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12))
        out[lo:hi] = new
    return out


def user_queries(model, n: int, seed: int = 2) -> np.ndarray:
    """Up to ``n`` user vectors: the artifact's encoder over its users' histories (``model`` is an
    ArtifactModel), at the time just after each user's last event."""
    users = sorted(model.histories)
    rng = np.random.default_rng(seed)
    picked = [users[i] for i in rng.permutation(len(users))[:n]]
    histories = [model.histories[u] for u in picked]
    return np.asarray(model.encode(histories, [h[-1][2] + 1000 for h in histories]), dtype=np.float32)
