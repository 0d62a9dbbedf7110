"""Run an exported artifact with ONNX Runtime (no torch needed).

``select_providers`` picks TensorRT (fp16, engine cache) -> CUDA -> CPU from what this onnxruntime build
offers and this machine can load, and logs the choice once.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from recmodel.artifact import ArtifactError, Manifest, verify_artifact
from recmodel.data.types import HistoryEntry
from recmodel.features import N_GAP_BUCKETS, gap_buckets
from recmodel.transitions import TransitionRows

log = logging.getLogger(__name__)
_logged_choice: tuple | None = None


def provider_names(providers: Sequence) -> list[str]:
    """The names in a providers list as ``select_providers`` returns it (a name, or a (name, options) pair)."""
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def select_providers(
    available: Sequence[str] | None = None, *, trt_engine_cache_dir: str | None = None, device_id: int = 0
) -> list:
    """Providers for ``onnxruntime.InferenceSession``: TensorRT -> CUDA -> CPU, as available."""
    global _logged_choice
    skipped: dict[str, str] = {}
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if "CUDAExecutionProvider" in available:
            _preload_cuda(ort)
        if "TensorrtExecutionProvider" in available and (missing := _load_tensorrt_runtime()):
            available = [p for p in available if p != "TensorrtExecutionProvider"]
            skipped["TensorrtExecutionProvider"] = missing
    chosen: list = []
    # device_id is named only when it is not the default: onnxruntime-gpu (1.26 and later) first looks for a
    # registered plugin EP device for a provider given a device_id, and logs a warning at every session it
    # creates when there is none, which is at every model version and weight delta inference loads.
    device = {"device_id": device_id} if device_id else {}
    if "TensorrtExecutionProvider" in available:
        opts = {**device, "trt_fp16_enable": True}
        if trt_engine_cache_dir:
            opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": trt_engine_cache_dir})
        chosen.append(("TensorrtExecutionProvider", opts))
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", dict(device)))
    chosen.append("CPUExecutionProvider")
    names = tuple(provider_names(chosen))
    if _logged_choice != names:
        _logged_choice = names
        log.info("onnxruntime execution providers chosen", extra={"providers": list(names)})
        for name, why in skipped.items():
            log.warning("onnxruntime execution provider skipped", extra={"provider": name, "reason": why})
    return chosen


# What the TensorRT provider of onnxruntime-gpu 1.31 links against: TensorRT 10 (tensorrt-cu13 10.x).
TENSORRT_RUNTIME = ("libnvinfer.so.10", "libnvonnxparser.so.10")


def _load_tensorrt_runtime() -> str | None:
    """Load TensorRT's libraries into this process: None when they load, else what is missing.

    onnxruntime-gpu offers its TensorRT provider whether or not TensorRT is installed; a session asked
    for it then prints an error and retries without it, at every model load. The tensorrt-cu13 wheels put
    the libraries in the ``tensorrt_libs`` package, off the loader's path; once loaded from there, the
    provider's own ``dlopen`` finds them by name.
    """
    spec = importlib.util.find_spec("tensorrt_libs")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for lib in TENSORRT_RUNTIME:
        for candidate in [lib, *(str(Path(f) / lib) for f in folders)]:
            try:
                ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
                break
            except OSError:
                continue
        else:
            return f"{lib} not found (install the tensorrt-cu13 10.x wheels, or put TensorRT on the library path)"
    return None


def _preload_cuda(ort) -> None:
    """Load the CUDA and cuDNN libraries of the nvidia-* wheels (torch's), when present, so the CUDA provider
    finds them without LD_LIBRARY_PATH; a CUDA base image has them on the loader's path anyway."""
    try:
        ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
    except Exception as exc:  # onnxruntime raises RuntimeError, the loader OSError
        log.debug("onnxruntime preload_dlls", extra={"error": str(exc)})


def serving_session_options(threads: int = 1):
    """ONNX Runtime options for serving: ``threads`` intra-op threads that sleep between runs.

    The user encoder is small (a few sequence positions per request); by default ONNX Runtime starts a
    thread per core whose workers spin after every run, which on a busy serving process takes the CPU
    the gRPC threads need.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _load_ivf(directory: Path, manifest: Manifest, n_items: int, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The shipped IVF quantizer (``recmodel.ivf``), or None: artifacts of small catalogs have none."""
    if "ivf.npz" not in manifest.files:
        return None
    try:
        with np.load(directory / "ivf.npz", allow_pickle=False) as npz:
            centroids = np.ascontiguousarray(npz["centroids"], dtype=np.float32)
            lists = np.asarray(npz["assign"], dtype=np.int32)
    except (OSError, KeyError, ValueError) as exc:
        raise ArtifactError(f"ivf.npz: cannot read ({exc})") from None
    if centroids.ndim != 2 or centroids.shape[1] != dim or lists.shape != (n_items,):
        raise ArtifactError(f"ivf.npz: centroids {centroids.shape} and assign {lists.shape} do not fit "
                            f"{n_items} items of dimension {dim}")
    return centroids, lists


class ArtifactModel:
    """A loaded, verified artifact: item table, histories snapshot and an ONNX user encoder."""

    manifest: Manifest
    item_ids: np.ndarray
    item_vectors: np.ndarray
    item_index: dict[str, int]
    titles: np.ndarray
    categories: np.ndarray
    available: np.ndarray
    histories: dict[str, list[HistoryEntry]]
    max_len: int
    providers: list[str]
    ivf: tuple[np.ndarray, np.ndarray] | None  # the shipped IVF quantizer (recmodel.ivf), when the catalog is large

    @classmethod
    def load(
        cls,
        directory: str | Path,
        providers: list | None = None,
        *,
        encoder_file: str = "user_encoder.onnx",
        manifest: Manifest | None = None,
        session_options=None,
    ) -> "ArtifactModel":
        """Load ``directory``; ``manifest``, when given, is its manifest as already verified (e.g. by the
        registry download, whose archive digest covers every file): nothing is hashed or parsed again."""
        import onnxruntime as ort

        directory = Path(directory)
        if manifest is None:
            manifest = verify_artifact(directory)
        if encoder_file not in manifest.files:
            raise ArtifactError(f"{encoder_file}: not in this artifact")
        self = cls()
        self.manifest = manifest
        self.directory = directory
        self.max_len = manifest.max_len
        self.dim = manifest.dim
        self.type_ids = {t: i + 1 for i, t in enumerate(manifest.event_types)}
        self.unknown_type = len(manifest.event_types) + 1
        self.n_gap_buckets = int(manifest.extra.get("n_gap_buckets", N_GAP_BUCKETS))
        try:
            with np.load(directory / "items.npz", allow_pickle=False) as npz:
                self.item_ids = npz["ids"]
                self.item_vectors = np.ascontiguousarray(npz["vectors"], dtype=np.float32)
                self.available = npz["available"].astype(bool)
                self.titles = npz["titles"]
                self.categories = npz["categories"]
        except (OSError, KeyError, ValueError) as exc:
            raise ArtifactError(f"items.npz: cannot read ({exc})") from None
        if self.item_vectors.shape != (len(self.item_ids), self.dim):
            raise ArtifactError(f"items.npz: vectors shape {self.item_vectors.shape} != ({len(self.item_ids)}, {self.dim})")
        self.item_index = {str(i): n for n, i in enumerate(self.item_ids.tolist())}
        self.ivf = _load_ivf(directory, manifest, len(self.item_ids), self.dim)
        self.transitions, self.transition_weight = _load_transitions(directory, manifest, len(self.item_ids))
        try:
            self.histories = read_histories((directory / "histories.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError, IndexError) as exc:
            raise ArtifactError(f"histories.json: cannot read ({exc})") from None
        chosen = providers if providers is not None else select_providers()
        if session_options is None:
            session_options = serving_session_options()
        try:
            self.session = ort.InferenceSession(str(directory / encoder_file), sess_options=session_options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ArtifactError(f"{encoder_file}: onnxruntime cannot load it ({exc})") from None
        self.providers = self.session.get_providers()
        return self

    def with_delta(self, delta, providers: list | None = None, *, session_options=None) -> "ArtifactModel":
        """A new model: this one with a weight delta applied (``recmodel.delta``: the encoder, and the item and
        transition rows that changed); this one is not changed. ``ArtifactError`` if the delta is for another
        item table or its encoder does not load."""
        import copy

        import onnxruntime as ort

        from recmodel.delta import apply_transitions, apply_vectors, check_ids

        if delta.base_items_sha256 != self.manifest.files.get("items.npz"):
            raise ArtifactError("delta: made for another item table (base_items_sha256 differs)")
        check_ids(delta, self.item_ids)
        try:
            session = ort.InferenceSession(delta.encoder, sess_options=session_options or serving_session_options(),
                                           providers=providers if providers is not None else select_providers())
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ArtifactError(f"delta: onnxruntime cannot load its encoder ({exc})") from None
        names = {i.name for i in session.get_inputs()}
        if names != {"item_vectors", "event_types", "gap_buckets", "mask"}:
            raise ArtifactError(f"delta: its encoder takes {sorted(names)}, not the user encoder's inputs")
        new = copy.copy(self)  # ids, titles, categories, availability, histories and the quantizer are shared
        new.session = session
        new.providers = session.get_providers()
        new.item_vectors = apply_vectors(self.item_vectors, delta)
        if self.transitions is not None and len(delta.tr_rows):
            new.transitions = apply_transitions(self.transitions, delta)
        new._rows_cache = None
        return new

    # ------------------------------------------------------------------ encoding
    def _batch(self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int] | int):
        L, D = self.max_len, self.dim
        B = len(histories)
        nows = [now_ms] * B if isinstance(now_ms, (int, np.integer)) else list(now_ms)
        vecs = np.zeros((B, L, D), dtype=np.float32)
        types = np.zeros((B, L), dtype=np.int64)
        gaps = np.zeros((B, L), dtype=np.int64)
        mask = np.zeros((B, L), dtype=bool)
        for b, (hist, now) in enumerate(zip(histories, nows)):
            rows, tids, ts = [], [], []
            for item_id, etype, t in hist:
                row = self.item_index.get(item_id)
                if row is None:
                    continue  # unknown to this model version
                rows.append(row)
                tids.append(self.type_ids.get(etype, self.unknown_type))
                ts.append(int(t))
            rows, tids, ts = rows[-L:], tids[-L:], ts[-L:]
            n = len(rows)
            if not n:
                continue
            vecs[b, L - n :] = self.item_vectors[rows]
            types[b, L - n :] = tids
            t = np.asarray(ts, dtype=np.int64)
            gaps[b, L - n :] = gap_buckets(np.append(t[1:], int(now)) - t, self.n_gap_buckets)
            mask[b, L - n :] = True
        return vecs, types, gaps, mask

    def encode(self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int] | int) -> np.ndarray:
        """User vectors [B, D] for histories of (item_id, event_type, timestamp_ms), oldest first."""
        if not histories:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs, types, gaps, mask = self._batch(histories, now_ms)
        (out,) = self.session.run(None, {"item_vectors": vecs, "event_types": types, "gap_buckets": gaps, "mask": mask})
        return out

    def score(self, histories, now_ms, item_ids: Sequence[str]) -> np.ndarray:
        """Evaluation interface: scores [B, len(item_ids)], -inf for items not in this artifact."""
        users = self.encode(histories, now_ms)
        rows, whole = self._rows_of(item_ids)
        gather = None if whole else np.maximum(rows, 0)  # whole: the item table itself, no copy of it per batch
        scores = users @ (self.item_vectors if whole else self.item_vectors[gather]).T
        if self.transitions is not None:
            for b, hist in enumerate(histories):
                if whole:  # only the table's top few items per history have a bonus
                    bonus_rows, bonus = self.transitions.sparse_bonus(self.history_rows(hist))
                    scores[b, bonus_rows] += self.transition_weight * bonus
                else:
                    scores[b] += self.transition_bonus(hist)[gather]
        if not whole:
            scores[:, rows < 0] = -np.inf
        return scores

    def _rows_of(self, item_ids: Sequence[str]) -> tuple[np.ndarray, bool]:
        """The rows of ``item_ids`` (-1 where unknown), and whether they are every row in order. An evaluation
        scores one catalogue in many batches, so the answer for the last tuple seen is kept (immutable, and
        held here, so the same object is the same ids): a million dict lookups per batch otherwise."""
        cached = getattr(self, "_rows_cache", None)
        if cached is not None and cached[0] is item_ids:
            return cached[1], cached[2]
        rows = np.array([self.item_index.get(i, -1) for i in item_ids], dtype=np.int64)
        whole = len(rows) == len(self.item_ids) and bool(np.array_equal(rows, np.arange(len(rows))))
        if isinstance(item_ids, tuple):
            self._rows_cache = (item_ids, rows, whole)
        return rows, whole

    def history_rows(self, history: Sequence[HistoryEntry]) -> list[int]:
        return [r for r in (self.item_index.get(h[0]) for h in history) if r is not None]

    def transition_bonus(self, history: Sequence[HistoryEntry], banned: Sequence[int] | None = None) -> np.ndarray:
        """The weighted transition bonus of every item row for this history (zeros without a table); ``banned``
        rows (default: the history's) are never shown, so they take no place among the table's top items."""
        if self.transitions is None:
            return np.zeros(len(self.item_ids), dtype=np.float32)
        rows = self.history_rows(history)
        return self.transition_weight * self.transitions.dense_bonus(rows, len(self.item_ids), banned)

    def recommend(
        self,
        history: Sequence[HistoryEntry],
        k: int = 10,
        exclude: Iterable[str] = (),
        *,
        now_ms: int | None = None,
        exclude_seen: bool = True,
    ) -> list[tuple[str, float]]:
        """Exact dot-product top-``k`` over available items (for tests and evaluation)."""
        history = list(history)
        now = now_ms if now_ms is not None else (history[-1][2] if history else 0)
        scores = (self.encode([history], now)[0] @ self.item_vectors.T).astype(np.float64)
        banned = set(exclude) | ({h[0] for h in history} if exclude_seen else set())
        if self.transitions is not None:
            banned_rows = [self.item_index[i] for i in banned if i in self.item_index]
            banned_rows += np.flatnonzero(~self.available).tolist()
            scores += self.transition_bonus(history, banned_rows)
        scores[~self.available] = -np.inf
        for item_id in banned:
            row = self.item_index.get(item_id)
            if row is not None:
                scores[row] = -np.inf
        order = np.argsort(-scores, kind="stable")[:k]
        return [(str(self.item_ids[j]), float(scores[j])) for j in order if np.isfinite(scores[j])]


_SPACE = re.compile(r"[ \t\n\r]*")


def read_histories(text: str) -> dict[str, list[HistoryEntry]]:
    """``histories.json`` ({user_id: [[item_id, event_type, timestamp_ms], ...]}), parsed a user at a time.

    One ``json.loads`` of the whole file holds the GIL from start to end: 160 ms for 5,000 users (4.7 MB) on a
    quiet 2-core machine, during which an inference process loading a version answers nothing and applies no
    event. Parsed a user at a time, its other threads run between users. ``ValueError`` on malformed input."""
    decoder = json.JSONDecoder()
    out: dict[str, list[HistoryEntry]] = {}
    i = _SPACE.match(text).end()
    if text[i:i + 1] != "{":
        raise ValueError("not a JSON object")
    i = _SPACE.match(text, i + 1).end()
    closed = text[i:i + 1] == "}"
    while not closed:
        user, i = decoder.raw_decode(text, i)
        i = _SPACE.match(text, i).end()
        if not isinstance(user, str) or text[i:i + 1] != ":":
            raise ValueError(f"expected a user id and ':' at character {i}")
        history, i = decoder.raw_decode(text, _SPACE.match(text, i + 1).end())
        out[user] = [(str(e[0]), str(e[1]), int(e[2])) for e in history]
        i = _SPACE.match(text, i).end()
        closed = text[i:i + 1] == "}"
        if not closed:
            if text[i:i + 1] != ",":
                raise ValueError(f"expected ',' or '}}' at character {i}")
            i = _SPACE.match(text, i + 1).end()
    if _SPACE.match(text, i + 1).end() != len(text):
        raise ValueError(f"extra data at character {i + 1}")
    return out


def _load_transitions(directory: Path, manifest: Manifest, n_items: int) -> tuple[TransitionRows | None, float]:
    """The artifact's transition table and its weight; (None, 0) for artifacts written without one."""
    info = manifest.extra.get("transitions")
    if "transitions.npz" not in manifest.files or not isinstance(info, dict):
        return None, 0.0
    try:
        weight, window, decay = float(info["weight"]), int(info["window"]), float(info["decay"])
        top = int(info.get("top", 0))  # artifacts from before the top cut give every item its bonus
        with np.load(directory / "transitions.npz", allow_pickle=False) as npz:
            rows = TransitionRows(npz["indptr"], npz["indices"], npz["probs"], n_items=n_items, window=window,
                                  decay=decay, top=top)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"transitions.npz: cannot read ({exc})") from None
    if not (weight >= 0 and np.isfinite(weight)):
        raise ArtifactError(f"transitions: weight {weight!r} must be a finite number >= 0")
    return (rows if weight > 0 else None), weight
