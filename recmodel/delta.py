"""Weight deltas: what changed in a trainer since a full artifact, small enough to ship every second.

A delta names the full artifact it applies to (the sha256 of its ``items.npz``, which fixes the item
rows) and holds, in one ``.npz`` (read with ``allow_pickle=False``):

* ``encoder``: the user encoder as ONNX bytes (uint8), whole: it is small and every step moves it;
* ``rows``, ``ids``, ``vectors``: the base table's rows whose vectors changed, their item ids (checked
  against the base on apply) and their new vectors (float32 [n, dim]);
* ``tr_rows``, ``tr_indptr``, ``tr_indices``, ``tr_probs``: the transition rows that changed, as CSR over
  the base's item rows (steps to items the base does not have are left out, as in the full table);
* ``base_items_sha256``: the base, as above.

Items new since the base and availability changes wait for the next full version: a delta never
changes which rows exist, so a server swaps in new vectors without rebuilding anything.
Pure numpy and stdlib to read (``read_delta``, ``apply_*``); ``build_delta`` needs the trainer (torch).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from recmodel.artifact import ArtifactError, Manifest, sha256_file
from recmodel.transitions import TransitionRows, TransitionTable

# What one delta may hold, whatever its bytes claim: a server reads it whole into memory.
MAX_DELTA_ROWS = 1 << 22
MAX_ENCODER_BYTES = 256 * 1024 * 1024
_KEYS = ("base_items_sha256", "encoder", "rows", "ids", "vectors", "tr_rows", "tr_indptr", "tr_indices", "tr_probs")


@dataclass
class DeltaBase:
    """What a delta is computed against: a full artifact's item rows, vectors and transition table."""

    items_sha256: str
    ids: list[str]
    vectors: np.ndarray  # float32 [N, dim]
    indptr: np.ndarray
    indices: np.ndarray
    probs: np.ndarray

    @classmethod
    def from_artifact(cls, directory: str | Path, manifest: Manifest) -> "DeltaBase":
        directory = Path(directory)
        try:
            with np.load(directory / "items.npz", allow_pickle=False) as npz:
                ids = [str(i) for i in npz["ids"].tolist()]
                vectors = np.ascontiguousarray(npz["vectors"], dtype=np.float32)
            with np.load(directory / "transitions.npz", allow_pickle=False) as npz:
                indptr, indices, probs = npz["indptr"], npz["indices"], npz["probs"]
        except (OSError, KeyError, ValueError) as exc:
            raise ArtifactError(f"{directory}: cannot read the item table or transitions ({exc})") from None
        sha = manifest.files.get("items.npz") or sha256_file(directory / "items.npz")
        return cls(sha, ids, vectors, np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64),
                   np.asarray(probs, dtype=np.float32))


@dataclass
class Delta:
    """A read, checked delta (see the module docstring)."""

    base_items_sha256: str
    encoder: bytes
    rows: np.ndarray  # int64 [n]
    ids: np.ndarray  # str [n]
    vectors: np.ndarray  # float32 [n, dim]
    tr_rows: np.ndarray  # int64 [m]
    tr_indptr: np.ndarray  # int64 [m + 1]
    tr_indices: np.ndarray  # int64
    tr_probs: np.ndarray  # float32


def _changed_transition_rows(base: DeltaBase, csr: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rows of ``csr`` (over the base's items) that differ from the base's, as (rows, indptr, indices, probs)."""
    new_ptr, new_idx = np.asarray(csr["indptr"], dtype=np.int64), np.asarray(csr["indices"], dtype=np.int64)
    new_p = np.asarray(csr["probs"], dtype=np.float32)
    old_len, new_len = np.diff(base.indptr), np.diff(new_ptr)
    changed = old_len != new_len
    same = np.flatnonzero(~changed & (new_len > 0))
    if len(same):  # rows of equal length: compare their entries, summed per row
        starts_old, starts_new, lens = base.indptr[same], new_ptr[same], new_len[same]
        owner = np.repeat(np.arange(len(same)), lens)
        offs = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        pos_old, pos_new = np.repeat(starts_old, lens) + offs, np.repeat(starts_new, lens) + offs
        differs = (base.indices[pos_old] != new_idx[pos_new]) | (base.probs[pos_old] != new_p[pos_new])
        changed[same[np.unique(owner[differs])]] = True
    rows = np.flatnonzero(changed)
    lens = new_len[rows]
    take = np.concatenate([np.arange(new_ptr[r], new_ptr[r + 1]) for r in rows]) if len(rows) else np.zeros(0, np.int64)
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return rows.astype(np.int64), indptr, new_idx[take].astype(np.int32), new_p[take]


@dataclass
class DeltaCapture:
    """What a delta of a trainer holds, copied out of it (``capture_delta``, on the training thread) so that
    encoding it (``encode_delta``: the transition rows as CSR, the npz) can run on another thread while
    training goes on."""

    base: DeltaBase
    encoder: np.ndarray  # uint8: the ONNX file
    rows: np.ndarray
    ids: np.ndarray
    vectors: np.ndarray
    transitions: TransitionTable  # a copy of the trainer's


def capture_delta(trainer, base: DeltaBase) -> DeltaCapture:
    """The encoder, the base's item rows whose vectors moved, and a copy of the transition counts of
    ``trainer`` (its model and RNG state are left as they were, as by a full export)."""
    from recmodel.export import encoder_onnx_bytes

    known = [(n, i) for n, i in enumerate(base.ids) if i in trainer.vocab]
    rows = np.fromiter((n for n, _ in known), dtype=np.int64, count=len(known))
    ids = [i for _, i in known]
    vectors = trainer.item_vectors(ids) if ids else np.zeros((0, base.vectors.shape[1]), np.float32)
    moved = np.any(vectors != base.vectors[rows], axis=1) if len(rows) else np.zeros(0, dtype=bool)
    rows, vectors = rows[moved], np.asarray(vectors[moved], dtype=np.float32)
    ids = np.array([ids[j] for j in np.flatnonzero(moved)], dtype=np.str_)
    encoder = np.frombuffer(encoder_onnx_bytes(trainer.model.user_encoder, dim=trainer.dim, max_len=trainer.max_len),
                            dtype=np.uint8)
    return DeltaCapture(base, encoder, rows, ids, vectors, trainer.transitions.copy())


def encode_delta(capture: DeltaCapture) -> tuple[bytes, dict]:
    """The npz bytes of a captured delta, and counts (rows, transition_rows, bytes)."""
    base = capture.base
    tr_rows, tr_indptr, tr_indices, tr_probs = _changed_transition_rows(base, capture.transitions.to_csr(base.ids))
    buf = io.BytesIO()
    np.savez(buf, base_items_sha256=np.array(base.items_sha256), encoder=capture.encoder, rows=capture.rows,
             ids=capture.ids, vectors=capture.vectors, tr_rows=tr_rows, tr_indptr=tr_indptr, tr_indices=tr_indices,
             tr_probs=tr_probs)
    data = buf.getvalue()
    return data, {"rows": int(len(capture.rows)), "transition_rows": int(len(tr_rows)), "bytes": len(data)}


def build_delta(trainer, base: DeltaBase) -> tuple[bytes, dict]:
    """The npz bytes of ``trainer``'s delta against ``base``, and counts (rows, transition_rows, bytes), in one
    go (``capture_delta`` then ``encode_delta``)."""
    return encode_delta(capture_delta(trainer, base))


def read_delta(data: bytes, *, dim: int, n_items: int) -> Delta:
    """Parse and check a delta for a base of ``n_items`` rows of dimension ``dim``; ``ArtifactError`` says
    what is wrong with a malformed one (nothing in it is trusted: it came over the network)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [k for k in _KEYS if k not in npz.files]
            if missing:
                raise ArtifactError(f"delta: missing {missing}")
            got = {k: npz[k] for k in _KEYS}
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises many types on a malformed zip or array header
        raise ArtifactError(f"delta: not a readable npz ({type(exc).__name__}: {exc})") from None
    sha = got["base_items_sha256"]
    if sha.dtype.kind != "U" or sha.shape != ():
        raise ArtifactError("delta: base_items_sha256 must be a string")
    encoder = got["encoder"]
    if encoder.dtype != np.uint8 or encoder.ndim != 1 or not 0 < len(encoder) <= MAX_ENCODER_BYTES:
        raise ArtifactError("delta: encoder must be the ONNX file's bytes (uint8)")
    rows, vectors, ids = got["rows"], got["vectors"], got["ids"]
    n = len(rows)
    if (rows.dtype.kind not in "iu" or rows.ndim != 1 or n > MAX_DELTA_ROWS or vectors.dtype != np.float32
            or vectors.shape != (n, dim) or ids.dtype.kind != "U" or ids.shape != (n,)):
        raise ArtifactError(f"delta: rows {rows.shape}, ids {ids.shape} and vectors {vectors.shape} do not describe "
                            f"rows of dimension {dim}")
    if n and (rows.min() < 0 or rows.max() >= n_items or len(np.unique(rows)) != n):
        raise ArtifactError(f"delta: item rows must be distinct and within the base's {n_items}")
    if not np.all(np.isfinite(vectors)):
        raise ArtifactError("delta: vectors must be finite")
    tr_rows, tr_indptr = got["tr_rows"], got["tr_indptr"]
    tr_indices, tr_probs = got["tr_indices"], got["tr_probs"]
    m = len(tr_rows)
    if (tr_rows.dtype.kind not in "iu" or tr_rows.ndim != 1 or m > MAX_DELTA_ROWS or tr_indptr.dtype.kind not in "iu"
            or tr_indptr.shape != (m + 1,) or tr_indices.dtype.kind not in "iu" or tr_indices.ndim != 1
            or tr_probs.dtype != np.float32 or tr_probs.shape != tr_indices.shape):
        raise ArtifactError("delta: the transition rows are not CSR (tr_rows, tr_indptr, tr_indices, tr_probs)")
    if (tr_indptr[0] != 0 or np.any(np.diff(tr_indptr) < 0) or tr_indptr[-1] != len(tr_indices)
            or (m and (tr_rows.min() < 0 or tr_rows.max() >= n_items or len(np.unique(tr_rows)) != m))
            or (len(tr_indices) and (tr_indices.min() < 0 or tr_indices.max() >= n_items))
            or not np.all(np.isfinite(tr_probs))):
        raise ArtifactError(f"delta: transition rows out of order or outside the base's {n_items} items")
    return Delta(str(sha), encoder.tobytes(), rows.astype(np.int64), ids, vectors, tr_rows.astype(np.int64),
                 tr_indptr.astype(np.int64), tr_indices.astype(np.int64), tr_probs)


def check_ids(delta: Delta, item_ids: Sequence[str] | np.ndarray) -> None:
    """The delta's rows hold the ids it says (a delta for another table is refused, not misapplied)."""
    if len(delta.rows) and not np.array_equal(np.asarray(item_ids)[delta.rows].astype(np.str_), delta.ids):
        raise ArtifactError("delta: its item ids do not match the base's rows")


def apply_vectors(vectors: np.ndarray, delta: Delta) -> np.ndarray:
    """A new item table: ``vectors`` with the delta's rows replaced (``vectors`` itself is not changed)."""
    out = np.array(vectors, dtype=np.float32, copy=True)
    out[delta.rows] = delta.vectors
    return out


def apply_transitions(table: TransitionRows, delta: Delta) -> TransitionRows:
    """A new transition table: ``table``'s rows with the delta's replaced (``table`` is not changed)."""
    n = len(table.indptr) - 1
    lens = np.diff(table.indptr)
    new_lens = lens.copy()
    new_lens[delta.tr_rows] = np.diff(delta.tr_indptr)
    indptr = np.concatenate([[0], np.cumsum(new_lens)]).astype(np.int64)
    indices = np.empty(int(indptr[-1]), dtype=np.int64)
    probs = np.empty(int(indptr[-1]), dtype=np.float32)
    replaced = np.zeros(n, dtype=bool)
    replaced[delta.tr_rows] = True
    kept = np.flatnonzero(~replaced & (lens > 0))
    for src_ptr, src_idx, src_p, rows, src_rows in (
            (table.indptr, table.indices, table.probs, kept, kept),
            (delta.tr_indptr, delta.tr_indices, delta.tr_probs, delta.tr_rows, np.arange(len(delta.tr_rows)))):
        ln = src_ptr[src_rows + 1] - src_ptr[src_rows]
        if not int(ln.sum()):
            continue
        offs = np.arange(int(ln.sum())) - np.repeat(np.cumsum(ln) - ln, ln)
        dst = np.repeat(indptr[rows], ln) + offs
        src = np.repeat(src_ptr[src_rows], ln) + offs
        indices[dst] = src_idx[src]
        probs[dst] = src_p[src]
    return TransitionRows(indptr, indices, probs, n_items=n, window=table.window, decay=table.decay, top=table.top)
