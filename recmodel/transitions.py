"""Item-to-item transitions: which items users reach next from an item, and came from.

The sequential signal that a 64-dimensional dot product represents only approximately ("after this
film people watch that one") is counted exactly here, in one pass over the stream. Every training target
adds a count to it from each of the user's last ``span`` items (``span_decay ** d`` from the item ``d``
steps further back), and, with weight ``backward`` times the same, from it back to each of those items
that was a target itself: users often rate or watch a batch of items in one sitting, in no meaningful
order, so "seen together" carries as much as "seen next". Scoring blends it into the two-tower score:

    score(user, item) = cos(user vector, item vector) + weight * sum_d decay**d * P(item | history[-1-d])

over the user's last ``window`` items, P being the counted frequencies normalised per row. Only the
``top`` items with the largest bonus among those the user may be shown get it (0: every item): the table
re-ranks the few items it is surest of and leaves the rest of the list to the two towers, so an item
with no interactions yet (no counts, only its text) still reaches the users whose taste it matches. Counting is
exact after a single pass, so a streaming trainer has the same table as an offline one; it is what brings
the one-pass model close to the offline one on real data (numbers in ``recmodel/recipe.py``).

Each row keeps at most ``max_next`` successors (the most frequent; pruned when a row doubles that), so
the table stays bounded however long the stream runs. The trainer exports it as a CSR table over the
artifact's item rows (``transitions.npz``), which serving reads with :class:`TransitionRows`.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Collection, Iterable, Sequence

import numpy as np

from recmodel.arrays import member_mask

__all__ = ["TransitionTable", "TransitionRows"]


class TransitionTable:
    """Mutable counts, keyed by item id (the trainer's side)."""

    def __init__(self, *, max_next: int = 64, window: int = 5, decay: float = 0.7, span: int = 1,
                 span_decay: float = 0.7, backward: float = 0.0, top: int = 0) -> None:
        if max_next < 1 or window < 1 or span < 1 or not 0.0 < decay <= 1.0 or not 0.0 < span_decay <= 1.0:
            raise ValueError("transitions: max_next, window and span must be >= 1; decay and span_decay in (0, 1]")
        if not 0.0 <= backward <= 1.0 or top < 0:
            raise ValueError("transitions: backward must be in [0, 1] and top >= 0")
        self.max_next = max_next
        self.window = window
        self.decay = decay
        self.span = span
        self.span_decay = span_decay
        self.backward = backward
        self.top = top
        self._next: dict[str, dict[str, float]] = {}
        self._total: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._next)

    def observe(self, previous: str, item: str, count: float = 1.0) -> None:
        """Count a step from ``previous`` to ``item`` (a repeat of the same item is not a step)."""
        if previous == item:
            return
        row = self._next.setdefault(previous, {})
        row[item] = row.get(item, 0.0) + count
        self._total[previous] = self._total.get(previous, 0.0) + count
        if len(row) > 2 * self.max_next:
            self._prune(previous)

    def _prune(self, item: str) -> None:
        """Keep the ``max_next`` most frequent successors of ``item`` (the total keeps the pruned counts, so
        the kept probabilities stay calibrated)."""
        # Descending by count, ties in insertion order (a reversed sort is stable too); itemgetter rather
        # than a lambda negating the count: the same rows, 40% less time (the trainer prunes every ~65 new steps).
        self._next[item] = dict(sorted(self._next[item].items(), key=itemgetter(1), reverse=True)[: self.max_next])

    def observe_sequence(self, recent: Sequence[tuple[str, bool]] | None,
                         steps: Iterable[tuple[str, bool]]) -> list[tuple[str, bool]]:
        """Count every ``(item, counted)`` step whose flag is set, from the ``span`` items before it (``recent``,
        oldest first, for the first step) and, weighted by ``backward``, back to those of them that were
        counted; returns the last ``span`` steps, the ``recent`` of the sequence's continuation.

        The same counts as :meth:`observe` for each pair, in the same order (so the same floating-point sums);
        inlined, since the trainer calls it for every event, up to ``2 * span`` counts each."""
        span = self.span
        recent = list(recent or ())[-span:]
        weights = [self.span_decay**d for d in range(span)]
        backward = self.backward
        rows, totals, limit = self._next, self._total, 2 * self.max_next
        for item, counted in steps:
            if counted:
                for d in range(len(recent)):
                    previous, previous_counted = recent[-1 - d]
                    if previous == item:
                        continue  # a repeat of the same item is not a step, either way
                    w = weights[d]
                    row = rows.get(previous)
                    if row is None:
                        row = rows[previous] = {}
                    row[item] = row.get(item, 0.0) + w
                    totals[previous] = totals.get(previous, 0.0) + w
                    if len(row) > limit:
                        self._prune(previous)
                    if backward > 0 and previous_counted:
                        w *= backward
                        row = rows.get(item)
                        if row is None:
                            row = rows[item] = {}
                        row[previous] = row.get(previous, 0.0) + w
                        totals[item] = totals.get(item, 0.0) + w
                        if len(row) > limit:
                            self._prune(item)
            recent.append((item, bool(counted)))
            if len(recent) > span:
                del recent[0]
        return recent

    def forget(self, item: str) -> None:
        """Drop an evicted item's row (steps into it are skipped at scoring while it is unknown)."""
        self._next.pop(item, None)
        self._total.pop(item, None)

    def bonus(self, history: Sequence[str], exclude: Collection[str] = (),
              among: Collection[str] | None = None) -> dict[str, float]:
        """Decayed next-item probabilities from the last ``window`` items of ``history`` (oldest first), of
        the ``top`` items with the largest among those the user may be shown: in ``among`` (default: any)
        and not in ``exclude``."""
        out: dict[str, float] = {}
        for d, item in enumerate(reversed(history[-self.window :])):
            row = self._next.get(item)
            if not row:
                continue
            w = self.decay**d / self._total[item]
            for nxt, count in row.items():
                out[nxt] = out.get(nxt, 0.0) + w * count
        if exclude or among is not None:
            out = {i: v for i, v in out.items() if i not in exclude and (among is None or i in among)}
        if self.top and len(out) > self.top:
            out = dict(sorted(out.items(), key=lambda kv: -kv[1])[: self.top])
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

    def copy(self) -> "TransitionTable":
        """An independent copy (each row's dict copied at C speed: a few ms for thousands of rows)."""
        table = TransitionTable(max_next=self.max_next, window=self.window, decay=self.decay, span=self.span,
                                span_decay=self.span_decay, backward=self.backward, top=self.top)
        table._next = {k: dict(v) for k, v in self._next.items()}
        table._total = dict(self._total)
        return table

    def state_dict(self, copy: bool = True) -> dict:
        """The table's settings and counts; ``copy=False`` hands over its own dicts (serialize them at once)."""
        return {"max_next": self.max_next, "window": self.window, "decay": self.decay, "span": self.span,
                "span_decay": self.span_decay, "backward": self.backward, "top": self.top,
                "next": {k: dict(v) for k, v in self._next.items()} if copy else self._next,
                "total": dict(self._total) if copy else self._total}

    @classmethod
    def from_state_dict(cls, state: dict, **missing) -> "TransitionTable":
        """The table of :meth:`state_dict`; ``missing`` fills settings a state from an older version lacks
        (span, span_decay, backward, top), else they are the constructor's defaults."""
        settings = {"span": int, "span_decay": float, "backward": float, "top": int}
        extra = {k: cast(state[k]) for k, cast in settings.items() if k in state}
        extra.update({k: cast(missing[k]) for k, cast in settings.items() if k not in state and k in missing})
        table = cls(max_next=int(state["max_next"]), window=int(state["window"]), decay=float(state["decay"]), **extra)
        table._next = {str(k): {str(j): float(c) for j, c in v.items()} for k, v in state["next"].items()}
        table._total = {str(k): float(v) for k, v in state["total"].items()}
        return table


class TransitionRows:
    """Read-only CSR table over item rows (the serving side); see :meth:`TransitionTable.to_csr`."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, probs: np.ndarray, *, n_items: int,
                 window: int, decay: float, top: int = 0) -> None:
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
        if top < 0:
            raise ValueError("transitions: top must be >= 0")
        self.window = window
        self.decay = decay
        self.top = top

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

    def _summed(self, history_rows: Sequence[int], allowed) -> tuple[np.ndarray, np.ndarray]:
        """(distinct item rows, summed bonus) of the ``top`` largest among the rows ``allowed(rows)`` keeps."""
        b_rows, b_vals = self.bonus(history_rows)
        if not len(b_rows):
            return b_rows, b_vals
        uniq, inverse = np.unique(b_rows, return_inverse=True)
        summed = np.bincount(inverse, weights=b_vals)
        keep = allowed(uniq)
        uniq, summed = uniq[keep], summed[keep]
        if self.top and len(uniq) > self.top:
            best = np.sort(np.argsort(-summed, kind="stable")[: self.top])
            uniq, summed = uniq[best], summed[best]
        return uniq, summed

    def sparse_bonus(self, history_rows: Sequence[int], banned: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distinct item rows, float32 bonus) of the items with one; ``banned`` rows (default: the history's)
        get none and leave their place among the ``top`` to others."""
        ban = np.asarray(list(history_rows) if banned is None else list(banned), dtype=np.int64)
        rows, vals = self._summed(history_rows, lambda r: ~member_mask(r, ban))
        return rows, vals.astype(np.float32)

    def dense_bonus(self, history_rows: Sequence[int], n_items: int, banned: Sequence[int] | None = None) -> np.ndarray:
        """:meth:`sparse_bonus` spread over every item row (zeros elsewhere)."""
        out = np.zeros(n_items, dtype=np.float32)
        rows, vals = self.sparse_bonus(history_rows, banned)
        out[rows] = vals
        return out

    def rerank(self, user_vector: np.ndarray, vectors: np.ndarray, rows: np.ndarray, scores: np.ndarray,
               history_rows: Sequence[int], weight: float, k: int, allowed) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` by ``cosine + weight * bonus`` over the retrieved ``(rows, scores)`` and every row with a bonus.

        ``rows``/``scores`` are the top of the cosine ranking, so this is exact whenever they hold at
        least ``k`` rows: an item outside both sets has no bonus and a lower cosine than all of them.
        ``allowed(rows) -> bool mask`` filters the bonus rows the way retrieval filtered its own (available,
        not seen or excluded, in the requested categories).
        """
        if weight <= 0:
            return rows[:k], scores[:k]
        uniq, summed = self._summed(history_rows, allowed)
        if not len(uniq):
            return rows[:k], scores[:k]
        bonus = (summed * weight).astype(np.float32)
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
