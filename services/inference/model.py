"""One loaded model version: the ONNX user encoder, the item table and its retrieval index.

``ServedModel`` is built beside the live one, warmed up, and only then marked ``ready``; the
repository swaps it in by reference. It is immutable after that, so in-flight requests can keep
using an old version while a new one takes over.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from services.inference.config import IndexConfig
from services.inference.retrieval import ItemRetriever

logger = logging.getLogger(__name__)

HistoryEntry = tuple[str, str, int]


class UserEncoder(Protocol):
    """What the data plane needs from a model runtime (recmodel.serving.ArtifactModel has it)."""

    def encode(self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int] | int) -> np.ndarray: ...


def _split_categories(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(c for c in value.split("|") if c)
    return tuple(str(c) for c in (value or ()))


class ServedModel:
    def __init__(
        self,
        *,
        name: str,
        version: int,
        encoder: UserEncoder,
        item_ids: Sequence[str],
        item_vectors: np.ndarray,
        available: np.ndarray | None = None,
        titles: Sequence[str] | None = None,
        categories: Sequence | None = None,
        history_snapshot: Mapping[str, Sequence[HistoryEntry]] | None = None,
        training_offsets: Mapping[str, Mapping[int, int]] | None = None,
        max_len: int = 50,
        index_config: IndexConfig = IndexConfig(),
        index_cache_path: str | Path | None = None,
        providers: Sequence[str] = (),
        artifact_dir: str | Path | None = None,
    ) -> None:
        self.name = name
        self.version = int(version)
        self.encoder = encoder
        self.item_ids = list(item_ids)
        self.row_of = {iid: i for i, iid in enumerate(self.item_ids)}
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        n = len(self.item_ids)
        self.available = np.ones(n, dtype=bool) if available is None else np.asarray(available, dtype=bool)
        self.titles = list(titles) if titles is not None else [""] * n
        self.categories = [_split_categories(c) for c in categories] if categories is not None else [()] * n
        self.history_snapshot = history_snapshot or {}
        self.training_offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in (training_offsets or {}).items()}
        self.max_len = max_len
        self.providers = list(providers)
        self.artifact_dir = Path(artifact_dir) if artifact_dir else None
        self._category_rows: dict[str, np.ndarray] = {}
        by_cat: dict[str, list[int]] = {}
        for row, cats in enumerate(self.categories):
            for c in cats:
                by_cat.setdefault(c, []).append(row)
        self._category_rows = {c: np.array(rows, dtype=np.int64) for c, rows in by_cat.items()}
        self.retriever = ItemRetriever(self.item_vectors, self.available, index_config, index_cache_path)
        self.ready = False

    @classmethod
    def from_artifact(
        cls,
        artifact_dir: str | Path,
        *,
        version: int | None = None,
        providers: Sequence[str] | None = None,
        index_config: IndexConfig = IndexConfig(),
        index_cache_dir: str | Path | None = None,
    ) -> "ServedModel":
        """Load a verified artifact directory with ONNX Runtime on ``providers``."""
        from recmodel.serving import ArtifactModel

        artifact_dir = Path(artifact_dir)
        manifest = json.loads((artifact_dir / "manifest.json").read_text())
        runtime = ArtifactModel.load(artifact_dir, providers=providers)
        cache_path = None
        items_sha = (manifest.get("files") or {}).get("items.npz")
        if index_cache_dir is not None and items_sha:
            c = index_config
            cache_path = Path(index_cache_dir) / f"ivf-{items_sha[:24]}-n{c.nlist}-p{c.nprobe_fraction}.faiss"
        return cls(
            name=manifest.get("model_name", ""),
            version=int(version if version is not None else manifest.get("version", 0)),
            encoder=runtime,
            item_ids=runtime.item_ids,
            item_vectors=runtime.item_vectors,
            available=getattr(runtime, "available", None),
            titles=getattr(runtime, "titles", None),
            categories=getattr(runtime, "categories", None),
            history_snapshot=getattr(runtime, "histories", None) or {},
            training_offsets=manifest.get("training_offsets") or {},
            max_len=int(getattr(runtime, "max_len", manifest.get("max_len", 50))),
            index_config=index_config,
            index_cache_path=cache_path,
            providers=list(getattr(runtime, "providers", providers or [])),
            artifact_dir=artifact_dir,
        )

    # ------------------------------------------------------------------ serving
    @property
    def index_kind(self) -> str:
        return self.retriever.kind

    def encode(self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int]) -> np.ndarray:
        trimmed = [list(h)[-self.max_len:] for h in histories]
        return np.asarray(self.encoder.encode(trimmed, list(now_ms)), dtype=np.float32).reshape(len(trimmed), -1)

    def category_rows(self, categories: Sequence[str]) -> np.ndarray:
        found = [self._category_rows[c] for c in categories if c in self._category_rows]
        if not found:
            return np.empty(0, dtype=np.int64)
        return found[0] if len(found) == 1 else np.unique(np.concatenate(found))

    def offsets_for(self, topic: str) -> dict[int, int]:
        return dict(self.training_offsets.get(topic, {}))

    def warm_up(self, n: int = 8) -> None:
        """Run the encoder and the index a few times so the first real request is not the slow one."""
        now = int(time.time() * 1000)
        histories = [list(h) for h in list(self.history_snapshot.values())[:max(n, 1)] if h]
        if not histories:
            histories = [[(self.item_ids[0], "click", now)]] if self.item_ids else [[]]
        for batch in (1, min(len(histories), 8)):
            vecs = self.encode(histories[:batch], [now] * batch)
            for v in vecs:
                if len(self.item_ids):
                    self.retriever.search(v, 10)
        self.ready = True

    def describe(self) -> dict:
        return {"model": self.name, "version": self.version, "items": len(self.item_ids),
                "index": self.index_kind, "providers": self.providers}
