"""Item-to-item transitions: which items users reach next from an item.

The sequential signal that a 64-dimensional dot product represents only approximately ("after this
film people watch that one") is counted exactly here, in one pass over the stream: every training target
adds one count from the user's previous item to it. Scoring blends it into the two-tower score:

    score(user, item) = cos(user vector, item vector) + weight * sum_d decay**d * P(item | history[-1-d])

over the user's last ``window`` items, P being the counted next-item frequencies. Counting is exact after
a single pass, so a streaming trainer has the same table as an offline one; it is what brings the
one-pass model close to the offline one on real data (numbers in ``recmodel/recipe.py``).

Each row keeps at most ``max_next`` successors (the most frequent; pruned when a row doubles that), so
the table stays bounded however long the stream runs. The trainer exports it as a CSR table over the
artifact's item rows (``transitions.npz``), which serving reads with :class:`TransitionRows`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = ["TransitionTable", "TransitionRows"]


class TransitionTable:
    """Mutable counts, keyed by item id (the trainer's side)."""

    def __init__(self, *, max_next: int = 64, window: int = 5, decay: float = 0.7) -> None:
        if max_next < 1 or window < 1 or not 0.0 < decay <= 1.0:
            raise ValueError("transitions: max_next and window must be >= 1 and decay in (0, 1]")
        self.max_next = max_next
        self.window = window
        self.decay = decay
        self._next: dict[str, dict[str, float]] = {}
        self._total: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._next)

    def observe(self, previous: str, item: str) -> None:
        """Count one step from ``previous`` to ``item`` (a repeat of the same item is not a step)."""
        if previous == item:
            return
        row = self._next.setdefault(previous, {})
        row[item] = row.get(item, 0.0) + 1.0
        self._total[previous] = self._total.get(previous, 0.0) + 1.0
        if len(row) > 2 * self.max_next:
            kept = sorted(row.items(), key=lambda kv: -kv[1])[: self.max_next]
            self._next[previous] = dict(kept)  # the total keeps the pruned counts: kept P stay calibrated

    def observe_sequence(self, previous: str | None, steps: Iterable[tuple[str, bool]]) -> str | None:
        """Count every ``(item, counted)`` step whose flag is set, from the item before it (``previous`` for
        the first); returns the last item, the ``previous`` of the sequence's continuation."""
        for item, counted in steps:
            if counted and previous is not None:
                self.observe(previous, item)
            previous = item
        return previous

    def forget(self, item: str) -> None:
        """Drop an evicted item's row (steps into it are skipped at scoring while it is unknown)."""
        self._next.pop(item, None)
        self._total.pop(item, None)

    def bonus(self, history: Sequence[str]) -> dict[str, float]:
        """Decayed next-item probabilities from the last ``window`` items of ``history`` (oldest first)."""
        out: dict[str, float] = {}
        for d, item in enumerate(reversed(history[-self.window :])):
            row = self._next.get(item)
            if not row:
                continue
            w = self.decay**d / self._total[item]
            for nxt, count in row.items():
                out[nxt] = out.get(nxt, 0.0) + w * count
        return out

    def to_csr(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Rows and columns over ``item_ids`` (the artifact's item order); steps to other items are dropped."""
        index = {iid: n for n, iid in enumerate(item_ids)}
        indptr = np.zeros(len(item_ids) + 1, dtype=np.int64)
        cols: list[int] = []
        probs: list[float] = []
        for n, iid in enumerate(item_ids):
            row = self._next.get(iid)
            if row:
                total = self._total[iid]
                for nxt, count in row.items():
                    col = index.get(nxt)
                    if col is not None:
                        cols.append(col)
                        probs.append(count / total)
            indptr[n + 1] = len(cols)
        return {
            "indptr": indptr,
            "indices": np.asarray(cols, dtype=np.int32),
            "probs": np.asarray(probs, dtype=np.float32),
        }

    def state_dict(self) -> dict:
        return {"max_next": self.max_next, "window": self.window, "decay": self.decay,
                "next": {k: dict(v) for k, v in self._next.items()}, "total": dict(self._total)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "TransitionTable":
        table = cls(max_next=int(state["max_next"]), window=int(state["window"]), decay=float(state["decay"]))
        table._next = {str(k): {str(j): float(c) for j, c in v.items()} for k, v in state["next"].items()}
        table._total = {str(k): float(v) for k, v in state["total"].items()}
        return table


class TransitionRows:
    """Read-only CSR table over item rows (the serving side); see :meth:`TransitionTable.to_csr`."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, probs: np.ndarray, *, n_items: int,
                 window: int, decay: float) -> None:
        indptr = np.asarray(indptr, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        probs = np.asarray(probs, dtype=np.float32)
        if (indptr.shape != (n_items + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0)
                or indptr[-1] != len(indices) or len(indices) != len(probs)):
            raise ValueError("transitions: indptr does not describe the indices")
        if len(indices) and (indices.min() < 0 or indices.max() >= n_items):
            raise ValueError("transitions: an index points outside the item table")
        if not np.all(np.isfinite(probs)):
            raise ValueError("transitions: probabilities must be finite")
        self.indptr, self.indices, self.probs = indptr, indices, probs
        self.window = window
        self.decay = decay

    def bonus(self, history_rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(item rows, bonus) from the last ``window`` rows of a history (oldest first); rows may repeat."""
        parts_rows, parts_vals = [], []
        for d, row in enumerate(reversed(list(history_rows)[-self.window :])):
            lo, hi = self.indptr[row], self.indptr[row + 1]
            if hi > lo:
                parts_rows.append(self.indices[lo:hi])
                parts_vals.append(self.probs[lo:hi] * np.float32(self.decay**d))
        if not parts_rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return np.concatenate(parts_rows), np.concatenate(parts_vals)

    def dense_bonus(self, history_rows: Sequence[int], n_items: int) -> np.ndarray:
        out = np.zeros(n_items, dtype=np.float32)
        rows, vals = self.bonus(history_rows)
        np.add.at(out, rows, vals)
        return out

    def rerank(self, user_vector: np.ndarray, vectors: np.ndarray, rows: np.ndarray, scores: np.ndarray,
               history_rows: Sequence[int], weight: float, k: int, allowed) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` by ``cosine + weight * bonus`` over the retrieved ``(rows, scores)`` and every row with a bonus.

        ``rows``/``scores`` are the top of the cosine ranking, so this is exact whenever they hold at
        least ``k`` rows: an item outside both sets has no bonus and a lower cosine than all of them.
        ``allowed(rows) -> bool mask`` filters the bonus rows the way retrieval filtered its own (available,
        not seen or excluded, in the requested categories).
        """
        b_rows, b_vals = self.bonus(history_rows)
        if weight <= 0 or not len(b_rows):
            return rows[:k], scores[:k]
        uniq, inverse = np.unique(b_rows, return_inverse=True)
        bonus = (np.bincount(inverse, weights=b_vals) * weight).astype(np.float32)
        keep = allowed(uniq)
        uniq, bonus = uniq[keep], bonus[keep]
        extra = np.setdiff1d(uniq, rows, assume_unique=False)
        cand = np.concatenate([np.asarray(rows, dtype=np.int64), extra])
        cand_scores = np.concatenate([np.asarray(scores, dtype=np.float32),
                                      (vectors[extra] @ user_vector).astype(np.float32)])
        if len(uniq):
            pos = np.minimum(np.searchsorted(uniq, cand), len(uniq) - 1)
            hit = uniq[pos] == cand
            cand_scores[hit] += bonus[pos[hit]]
        top = np.argsort(-cand_scores, kind="stable")[:k]
        return cand[top], cand_scores[top]
