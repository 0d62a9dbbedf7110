"""One loaded model version: the ONNX user encoder, the item table and its retrieval index.

``ServedModel`` wraps a model runtime (``recmodel.serving.ArtifactModel``: manifest, encoder, item
table, history snapshot) and adds what serving needs on top: the retrieval index, category lookups
and the ``ready`` flag. It is built beside the live one, warmed up, and only then marked ``ready``;
the repository swaps it in by reference. It is immutable after that, so in-flight requests can keep
using an old version while a new one takes over.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from recmodel.arrays import member_mask
from recmodel.artifact import Manifest
from recmodel.data import HistoryEntry
from recmodel.transitions import TransitionRows
from services.inference.config import IndexConfig
from services.inference.retrieval import ItemRetriever

logger = logging.getLogger(__name__)


class UserEncoder(Protocol):
    def encode(self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int] | int) -> np.ndarray: ...


class ModelRuntime(UserEncoder, Protocol):
    """What serving reads from a loaded model (recmodel.serving.ArtifactModel has it)."""

    manifest: Manifest
    item_ids: Sequence[str]
    item_vectors: np.ndarray
    available: np.ndarray
    titles: Sequence[str]
    categories: Sequence
    histories: Mapping[str, Sequence[HistoryEntry]]
    providers: list
    transitions: TransitionRows | None  # the item-to-item table blended into the score, if the model has one
    transition_weight: float


@dataclass
class ItemTableModel:
    """A model runtime assembled from parts held in memory (an encoder and an item table): benchmarks, tests."""

    name: str
    encoder: UserEncoder | None
    item_ids: Sequence[str]
    item_vectors: np.ndarray
    available: np.ndarray | None = None
    titles: Sequence[str] | None = None
    categories: Sequence | None = None
    histories: Mapping[str, Sequence[HistoryEntry]] = field(default_factory=dict)
    max_len: int = 50
    providers: list = field(default_factory=list)
    ivf: tuple[np.ndarray, np.ndarray] | None = None  # (centroids, list of each row), as an artifact ships them
    transitions: TransitionRows | None = None
    transition_weight: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        self.available = np.ones(n, dtype=bool) if self.available is None else np.asarray(self.available, dtype=bool)
        self.titles = [""] * n if self.titles is None else self.titles
        self.categories = [()] * n if self.categories is None else self.categories
        self.manifest = Manifest(model_name=self.name, max_len=self.max_len)

    def encode(self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int] | int) -> np.ndarray:
        return self.encoder.encode(histories, now_ms)


def _split_categories(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(c for c in value.split("|") if c)
    return tuple(str(c) for c in (value or ()))


def _code_categories(values) -> tuple[list[tuple[str, ...]], dict[str, np.ndarray]]:
    """Per-row category tuples, and each category's sorted rows, from per-row category values ("a|b"
    strings, tuples or lists), with one pass of Python over the rows."""
    values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    code_of: dict = {}
    try:
        codes = [code_of.setdefault(v, len(code_of)) for v in values]
    except TypeError:  # unhashable values (lists): the same, as tuples
        code_of = {}
        codes = [code_of.setdefault(v if isinstance(v, (str, tuple)) else tuple(v or ()), len(code_of)) for v in values]
    distinct = [_split_categories(v) for v in code_of]  # in code order (dicts keep insertion order)
    per_row = [distinct[c] for c in codes]
    codes_arr = np.asarray(codes, dtype=np.int64)
    order = np.argsort(codes_arr, kind="stable")
    bounds = np.searchsorted(codes_arr[order], np.arange(len(distinct) + 1))
    by_cat: dict[str, list[np.ndarray]] = {}
    for code, cats in enumerate(distinct):
        for c in cats:
            by_cat.setdefault(c, []).append(order[bounds[code]:bounds[code + 1]])
    return per_row, {c: np.sort(np.concatenate(parts)) for c, parts in by_cat.items()}


class ServedModel:
    def __init__(
        self,
        runtime: ModelRuntime,
        *,
        version: int | None = None,
        index_config: IndexConfig = IndexConfig(),
        index_cache_path: str | Path | None = None,
    ) -> None:
        self.runtime = runtime
        manifest = runtime.manifest
        self.name = manifest.model_name
        self.version = int(version if version is not None else manifest.version)
        self.max_len = int(manifest.max_len)
        self.training_offsets = {t: {int(p): int(o) for p, o in parts.items()}
                                 for t, parts in manifest.training_offsets.items()}
        self.item_vectors = np.ascontiguousarray(runtime.item_vectors, dtype=np.float32)
        # Per-item Python work is what a model swap at a million items waits for (and, holding the GIL, what
        # the requests being served wait for meanwhile): the artifact's own id index is reused, and the
        # category strings (a few distinct combinations) are coded in one pass and split once each.
        index = getattr(runtime, "item_index", None)
        if not isinstance(index, dict):
            ids = self.item_ids.tolist() if isinstance(self.item_ids, np.ndarray) else self.item_ids
            index = dict(zip(map(str, ids), range(len(ids))))
        self.row_of = index
        self.categories, self._category_rows = _code_categories(runtime.categories)
        self.retriever = ItemRetriever(self.item_vectors, self.available, index_config, index_cache_path,
                                       quantizer=getattr(runtime, "ivf", None))
        self.delta = 0  # the weight delta applied (ModelRegistry.GetDelta's sequence); 0: the version as registered
        self.base = self  # the version as registered (a delta's model keeps it, to go back to)
        self.ready = False

    def with_delta(self, delta, sequence: int, training_offsets: Mapping[str, Mapping[int, int]], *,
                   session_options=None) -> "ServedModel":
        """A new, not yet warmed-up model: this version with a weight delta (``recmodel.delta.Delta``) applied.

        The item rows, their ids, categories and the retrieval index are shared; the encoder, the item
        vectors and the transition rows are the delta's. ``recmodel.artifact.ArtifactError`` when it does not
        apply (another item table, an encoder that does not load)."""
        runtime = self.runtime.with_delta(delta, self.providers, session_options=session_options)
        new = copy.copy(self)
        new.runtime = runtime
        new.item_vectors = np.ascontiguousarray(runtime.item_vectors, dtype=np.float32)
        new.retriever = self.retriever.with_vectors(new.item_vectors)
        new.delta = int(sequence)
        new.training_offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in training_offsets.items()}
        new.ready = False
        return new

    @classmethod
    def from_artifact(
        cls,
        artifact_dir: str | Path,
        manifest: Manifest,
        *,
        version: int | None = None,
        providers: Sequence[str] | None = None,
        index_config: IndexConfig = IndexConfig(),
        index_cache_dir: str | Path | None = None,
        encoder_threads: int = 1,
    ) -> "ServedModel":
        """Load the artifact directory that ``manifest`` was verified for, with ONNX Runtime on ``providers``."""
        from recmodel.serving import ArtifactModel, serving_session_options

        runtime = ArtifactModel.load(artifact_dir, providers=providers, manifest=manifest,
                                     session_options=serving_session_options(encoder_threads))
        cache_path = None
        items_sha = manifest.files.get("items.npz")
        if index_cache_dir is not None and items_sha:
            # nprobe is a search setting the retriever applies to a loaded index, so it is not part of the key.
            shape = f"n{index_config.nlist}" if index_config.nlist else f"l{index_config.lists_per_sqrt:g}"
            cache_path = Path(index_cache_dir) / f"ivf-{items_sha[:24]}-{shape}.faiss"
        return cls(runtime, version=version, index_config=index_config, index_cache_path=cache_path)

    # ------------------------------------------------------------------ what the runtime holds
    @property
    def item_ids(self) -> Sequence[str]:
        return self.runtime.item_ids

    @property
    def available(self) -> np.ndarray:
        return self.runtime.available

    @property
    def titles(self) -> Sequence[str]:
        return self.runtime.titles

    @property
    def history_snapshot(self) -> Mapping[str, Sequence[HistoryEntry]]:
        return self.runtime.histories

    @property
    def providers(self) -> list:
        return self.runtime.providers

    # ------------------------------------------------------------------ serving
    @property
    def index_kind(self) -> str:
        return self.retriever.kind

    def encode(self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int]) -> np.ndarray:
        trimmed = [list(h)[-self.max_len:] for h in histories]
        return np.asarray(self.runtime.encode(trimmed, list(now_ms)), dtype=np.float32).reshape(len(trimmed), -1)

    def rerank_with_transitions(self, history: Sequence[HistoryEntry], user_vector: np.ndarray, rows: np.ndarray,
                                scores: np.ndarray, k: int, banned: np.ndarray,
                                subset: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The retrieved top by cosine, re-ranked with the model's transition bonus (unchanged without one).

        The items the user's last few items lead to join the candidates, filtered as retrieval filters
        (available, not banned, in ``subset``); see ``recmodel.transitions.TransitionRows.rerank``.
        """
        table = self.runtime.transitions
        if table is None:
            return rows, scores

        def allowed(cand: np.ndarray) -> np.ndarray:
            ok = self.available[cand]  # a new array (fancy indexing)
            if len(banned):
                ok &= ~member_mask(cand, banned)
            if subset is not None:
                ok &= member_mask(cand, subset)
            return ok

        history_rows = [self.row_of[h[0]] for h in history if h[0] in self.row_of]
        return table.rerank(user_vector, self.item_vectors, rows, scores, history_rows,
                            self.runtime.transition_weight, k, allowed)

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
            histories = [[(str(self.item_ids[0]), "click", now)]] if len(self.item_ids) else [[]]
        for batch in (1, min(len(histories), 8)):
            vecs = self.encode(histories[:batch], [now] * batch)
            for v in vecs:
                if len(self.item_ids):
                    self.retriever.search(v, 10)
        self.ready = True
