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


class _PairIndex:
    """Where each (row, successor) pair sits in its row: an open-addressing hash table in numpy arrays, so a
    batch of pairs is looked up, added and removed with a few array operations instead of a dict operation
    per pair. Keys are ``row << 32 | successor``."""

    EMPTY, GONE = -1, -2

    def __init__(self, capacity: int = 1024) -> None:
        size = 1 << max(10, int(capacity - 1).bit_length())
        self.keys = np.full(size, self.EMPTY, dtype=np.int64)
        self.slots = np.zeros(size, dtype=np.int32)
        self.live = 0
        self.used = 0  # live and removed entries: probing passes over both

    @staticmethod
    def key(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return (rows.astype(np.int64) << 32) | cols.astype(np.int64)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        bits = len(self.keys).bit_length() - 1
        mixed = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        return (mixed >> np.uint64(64 - bits)).astype(np.int64)

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """The table position of each key, -1 where absent."""
        at = self._home(keys)
        out = np.full(len(keys), -1, dtype=np.int64)
        todo = np.arange(len(keys))
        mask = len(self.keys) - 1
        while len(todo):
            seen = self.keys[at[todo]]
            hit = seen == keys[todo]
            out[todo[hit]] = at[todo[hit]]
            todo = todo[~hit & (seen != self.EMPTY)]
            at[todo] = (at[todo] + 1) & mask
        return out

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The slot of each key, -1 where absent."""
        where = self._find(keys)
        return np.where(where >= 0, self.slots[np.maximum(where, 0)], -1)

    def add(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Add absent, distinct ``keys``."""
        if self.used + len(keys) > len(self.keys) // 2:
            self._rebuild(self.live + len(keys))
        at = self._home(keys)
        todo = np.arange(len(keys))
        mask = len(self.keys) - 1
        while len(todo):
            seen = self.keys[at[todo]]
            free = seen < 0
            claim = todo[free]
            places = at[claim]
            # Keys claiming the same free place: one of them writes last and keeps it; the others probe on.
            self.keys[places] = keys[claim]
            kept = self.keys[places] == keys[claim]
            won = claim[kept]
            self.slots[at[won]] = slots[won]
            self.used += int(np.count_nonzero(seen[free][kept] == self.EMPTY))  # a removed entry's place counts already
            left = np.ones(len(keys), dtype=bool)
            left[won] = False
            todo = todo[left[todo]]
            at[todo] = (at[todo] + 1) & mask
        self.live += len(keys)

    def set(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """New slots for present keys."""
        self.slots[self._find(keys)] = slots

    def remove(self, keys: np.ndarray) -> None:
        """Remove present keys."""
        where = self._find(keys)
        where = where[where >= 0]
        self.keys[where] = self.GONE
        self.live -= len(where)

    def _rebuild(self, live: int) -> None:
        keep = self.keys >= 0
        keys, slots = self.keys[keep], self.slots[keep]
        fresh = _PairIndex(4 * max(live, 256))
        fresh.add(keys, slots)
        self.keys, self.slots, self.live, self.used = fresh.keys, fresh.slots, fresh.live, fresh.used

    def copy(self) -> "_PairIndex":
        other = _PairIndex.__new__(_PairIndex)
        other.keys, other.slots, other.live, other.used = self.keys.copy(), self.slots.copy(), self.live, self.used
        return other


def _offsets(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., n - 1 for each n in ``counts``, concatenated."""
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


class TransitionTable:
    """Mutable counts, keyed by item id (the trainer's side).

    Stored as arrays: each item seen gets a row of ``2 * max_next + 1`` successor slots (ids and counts, in
    the order the successors were first counted, as a dict would keep them) and a total. A batch of sequences
    is counted with numpy (:meth:`observe_sequences`): the same additions, in the same order, as counting
    one pair at a time, so the same floating-point sums; only a row that a batch would take past
    ``2 * max_next`` successors is counted pair by pair, pruning at the same pair as before. The ids of
    items no row refers to any more (forgotten, pruned away) are dropped from time to time, so the table
    stays bounded by the items it still counts.
    """

    #: pairs counted per numpy pass (bounds the temporary [pairs, row width] comparison)
    CHUNK_PAIRS = 32_768

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
        self._width = 2 * max_next + 1
        self._index: dict[str, int] = {}  # item id -> row
        self._ids: list[str] = []
        self._cols = np.zeros((0, self._width), dtype=np.int32)
        self._counts = np.zeros((0, self._width), dtype=np.float64)
        self._len = np.zeros(0, dtype=np.int32)
        self._total = np.zeros(0, dtype=np.float64)
        self._pairs = _PairIndex()
        self._compact_at = 4096

    def __len__(self) -> int:
        """Items with successors."""
        return int(np.count_nonzero(self._len[: len(self._ids)]))

    # ------------------------------------------------------------------ rows
    def _intern(self, item: str) -> int:
        row = self._index.get(item)
        if row is None:
            row = self._index[item] = len(self._ids)
            self._ids.append(item)
        return row

    def _reserve(self) -> None:
        """Room for a row per interned id."""
        need, have = len(self._ids), len(self._len)
        if need <= have:
            return
        size = max(need, 2 * have, 1024)
        grow = size - have
        self._cols = np.concatenate([self._cols, np.zeros((grow, self._width), dtype=np.int32)])
        self._counts = np.concatenate([self._counts, np.zeros((grow, self._width), dtype=np.float64)])
        self._len = np.concatenate([self._len, np.zeros(grow, dtype=np.int32)])
        self._total = np.concatenate([self._total, np.zeros(grow, dtype=np.float64)])

    def _row_items(self, row: int) -> list[tuple[int, float]]:
        n = int(self._len[row])
        return list(zip(self._cols[row, :n].tolist(), self._counts[row, :n].tolist()))

    def _set_row(self, row: int, entries) -> None:
        n = len(entries)
        if n:
            cols, counts = zip(*entries)
            self._cols[row, :n] = cols
            self._counts[row, :n] = counts
        self._len[row] = n

    def successors(self, item: str) -> dict[str, float]:
        """``item``'s counted successors and their counts, in the order they were first counted."""
        row = self._index.get(item)
        if row is None:
            return {}
        return {self._ids[c]: v for c, v in self._row_items(row)}

    def rows(self) -> dict[str, dict[str, float]]:
        """Every item with successors -> :meth:`successors`."""
        return {self._ids[r]: self.successors(self._ids[r]) for r in np.flatnonzero(self._len[: len(self._ids)]).tolist()}

    def totals(self) -> dict[str, float]:
        """Every item with successors -> all that was ever counted from it (pruned counts included)."""
        live = np.flatnonzero(self._len[: len(self._ids)])
        return dict(zip((self._ids[r] for r in live.tolist()), self._total[live].tolist()))

    # ------------------------------------------------------------------ counting
    def observe(self, previous: str, item: str, count: float = 1.0) -> None:
        """Count a step from ``previous`` to ``item`` (a repeat of the same item is not a step)."""
        if previous == item:
            return
        rows = np.array([self._intern(previous)], dtype=np.int64)
        cols = np.array([self._intern(item)], dtype=np.int64)
        self._reserve()
        self._count(rows, cols, np.array([count], dtype=np.float64))

    def observe_sequence(self, recent: Sequence[tuple[str, bool]] | None,
                         steps: Iterable[tuple[str, bool]]) -> list[tuple[str, bool]]:
        """Count every ``(item, counted)`` step whose flag is set, from the ``span`` items before it (``recent``,
        oldest first, for the first step) and, weighted by ``backward``, back to those of them that were
        counted; returns the last ``span`` steps, the ``recent`` of the sequence's continuation."""
        return self.observe_sequences([(recent, steps)])[0]

    def observe_sequences(self, sequences: Iterable[tuple[Sequence[tuple[str, bool]] | None,
                                                         Iterable[tuple[str, bool]]]]) -> list[list[tuple[str, bool]]]:
        """:meth:`observe_sequence` for several sequences (users) at once, in their order: the same counts as
        one call per sequence, and as :meth:`observe` for each pair in turn (so the same floating-point sums)."""
        span = self.span
        steps_all: list[tuple[str, bool]] = []
        n_recent: list[int] = []
        n_steps: list[int] = []
        out: list[list[tuple[str, bool]]] = []
        for recent, steps in sequences:
            recent = list(recent or ())[-span:]
            steps = [(item, bool(counted)) for item, counted in steps]
            n_recent.append(len(recent))
            n_steps.append(len(steps))
            sequence = recent + steps
            steps_all.extend(sequence)
            out.append(sequence[-span:])
        if steps_all:
            names, counted = zip(*steps_all)
            rows = list(map(self._index.get, names))
            if None in rows:
                rows = [self._intern(item) if row is None else row for row, item in zip(rows, names)]
            self._reserve()
            recents = np.array(n_recent, dtype=np.int64)
            lengths = recents + np.array(n_steps, dtype=np.int64)
            first = np.cumsum(lengths) - lengths  # where each sequence starts
            starts = np.repeat(first, lengths)
            news = np.ones(len(steps_all), dtype=bool)  # False for the recent steps each sequence continues from
            news[np.repeat(first, recents) + _offsets(recents)] = False
            self._count_steps(np.array(rows, dtype=np.int64), np.array(counted, dtype=bool), news, starts)
        if len(self._ids) > self._compact_at:
            self._compact()
        return out

    def _count_steps(self, items: np.ndarray, flags: np.ndarray, news: np.ndarray, starts: np.ndarray) -> None:
        """The pairs of every new counted step, in the order one pair at a time would count them: by step,
        then distance back, forward before backward."""
        targets = np.flatnonzero(news & flags)
        keys, rows, cols, weights = [], [], [], []
        stride = 2 * self.span
        for d in range(self.span):
            j = targets[targets - 1 - d >= starts[targets]]
            i = j - 1 - d
            differ = items[i] != items[j]  # a repeat of the same item is not a step, either way
            j, i = j[differ], i[differ]
            w = self.span_decay**d
            keys.append(j * stride + 2 * d)
            rows.append(items[i])
            cols.append(items[j])
            weights.append(np.full(len(j), w))
            if self.backward > 0:
                back = flags[i]
                keys.append(j[back] * stride + 2 * d + 1)
                rows.append(items[j[back]])
                cols.append(items[i[back]])
                weights.append(np.full(int(back.sum()), w * self.backward))
        order = np.argsort(np.concatenate(keys), kind="stable")
        rows_all, cols_all, w_all = (np.concatenate(a)[order] for a in (rows, cols, weights))
        for lo in range(0, len(order), self.CHUNK_PAIRS):
            hi = lo + self.CHUNK_PAIRS
            self._count(rows_all[lo:hi], cols_all[lo:hi], w_all[lo:hi])

    def _count(self, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> None:
        """Add ``weights`` to the pairs ``(rows, cols)``, in order."""
        if not len(rows):
            return
        np.add.at(self._total, rows, weights)  # sequentially, in the pairs' order: the same sums
        while len(rows):
            rows, cols, weights = self._count_until_pruned(rows, cols, weights)

    def _count_until_pruned(self, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray):
        """Count the pairs in order up to, in each row, the pair that takes it past ``2 * max_next`` successors;
        prune those rows there; -> the pairs left, in order, for the next round."""
        keys = _PairIndex.key(rows, cols)
        pos = self._pairs.lookup(keys)
        missing = np.flatnonzero(pos < 0)
        later = np.zeros(len(rows), dtype=bool)
        crossed = np.zeros(0, dtype=np.int64)
        if len(missing):
            uniq, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
            # The keys sort by row: within each, number the new successors in the order first counted.
            uniq_rows = uniq >> 32
            by_row = np.lexsort((first, uniq_rows))
            grouped = uniq_rows[by_row]
            runs = np.r_[0, np.flatnonzero(grouped[1:] != grouped[:-1]) + 1]
            rank = np.empty(len(uniq), dtype=np.int64)
            rank[by_row] = np.arange(len(uniq)) - np.repeat(runs, np.diff(np.r_[runs, len(uniq)]))
            at = missing[first]  # the pair that first counts each
            new_rows, new_cols = rows[at], cols[at]
            slots = self._len[new_rows] + rank
            # The new successor that takes its row past 2 * max_next: the row is pruned right after its pair,
            # and the row's later pairs wait for the next round.
            crossing = slots == 2 * self.max_next
            if crossing.any():
                crossed = new_rows[crossing]
                cut = np.full(len(self._ids), len(rows), dtype=np.int64)
                cut[crossed] = at[crossing]
                later = np.arange(len(rows)) > cut[rows]
            placed = slots <= 2 * self.max_next
            self._cols[new_rows[placed], slots[placed]] = new_cols[placed]
            self._counts[new_rows[placed], slots[placed]] = 0.0
            np.add.at(self._len, new_rows[placed], 1)
            self._pairs.add(uniq[placed], slots[placed])
            pos[missing] = slots[inverse.reshape(-1)]
        now = ~later
        np.add.at(self._counts, (rows[now], pos[now]), weights[now])
        if len(crossed):
            self._prune_rows(crossed)
        return rows[later], cols[later], weights[later]

    def _prune_rows(self, rows: np.ndarray) -> None:
        """Keep the ``max_next`` most frequent successors of each of these full rows, in that order; equals keep
        their order (a stable sort, as a dict sorted in reverse keeps them). The total keeps the pruned counts,
        so the kept probabilities stay calibrated."""
        keep_n = self.max_next
        counts, cols = self._counts[rows], self._cols[rows]
        order = np.argsort(-counts, axis=1, kind="stable")
        kept, dropped = order[:, :keep_n], order[:, keep_n:]
        gone = np.take_along_axis(cols, dropped, axis=1)
        self._pairs.remove(_PairIndex.key(np.repeat(rows, gone.shape[1]), gone.ravel()))
        new_cols = np.take_along_axis(cols, kept, axis=1)
        self._cols[rows, :keep_n] = new_cols
        self._counts[rows, :keep_n] = np.take_along_axis(counts, kept, axis=1)
        self._len[rows] = keep_n
        self._pairs.set(_PairIndex.key(np.repeat(rows, keep_n), new_cols.ravel()),
                        np.tile(np.arange(keep_n, dtype=np.int32), len(rows)))

    def _reindex(self) -> None:
        """The pair index rebuilt from the rows."""
        n = len(self._ids)
        valid = np.arange(self._width) < self._len[:n, None]
        rows = np.broadcast_to(np.arange(n)[:, None], valid.shape)[valid]
        slots = np.broadcast_to(np.arange(self._width, dtype=np.int32), valid.shape)[valid]
        self._pairs = _PairIndex(4 * max(len(rows), 256))
        self._pairs.add(_PairIndex.key(rows, self._cols[:n][valid]), slots)

    def forget(self, item: str) -> None:
        """Drop an evicted item's row (steps into it are skipped at scoring while it is unknown)."""
        row = self._index.get(item)
        if row is not None and self._len[row]:
            n = int(self._len[row])
            self._pairs.remove(_PairIndex.key(np.full(n, row), self._cols[row, :n]))
            self._len[row] = 0
        if row is not None:
            self._total[row] = 0.0

    def _compact(self) -> None:
        """Drop the ids no row refers to (neither its own successors nor anyone's successor)."""
        n = len(self._ids)
        lens = self._len[:n]
        used = np.zeros(n, dtype=bool)
        used[lens > 0] = True
        used[self._cols[:n][np.arange(self._width) < lens[:, None]]] = True
        kept = np.flatnonzero(used)
        if len(kept) * 2 > n:
            self._compact_at = max(4096, 2 * n)
            return
        renumber = np.full(n, -1, dtype=np.int32)
        renumber[kept] = np.arange(len(kept), dtype=np.int32)
        self._cols = np.where(np.arange(self._width) < lens[kept][:, None], renumber[self._cols[kept]], 0).astype(np.int32)
        self._counts = self._counts[kept].copy()
        self._len = lens[kept].copy()
        self._total = self._total[kept].copy()
        self._ids = [self._ids[r] for r in kept.tolist()]
        self._index = {item: r for r, item in enumerate(self._ids)}
        self._reindex()
        self._compact_at = max(4096, 2 * len(self._ids))

    # ------------------------------------------------------------------ reading
    def bonus(self, history: Sequence[str], exclude: Collection[str] = (),
              among: Collection[str] | None = None) -> dict[str, float]:
        """Decayed next-item probabilities from the last ``window`` items of ``history`` (oldest first), of
        the ``top`` items with the largest among those the user may be shown: in ``among`` (default: any)
        and not in ``exclude``."""
        out: dict[str, float] = {}
        ids = self._ids
        for d, item in enumerate(reversed(history[-self.window :])):
            row = self._index.get(item)
            if row is None or not self._len[row]:
                continue
            w = self.decay**d / float(self._total[row])
            for col, count in self._row_items(row):
                nxt = ids[col]
                out[nxt] = out.get(nxt, 0.0) + w * count
        if exclude or among is not None:
            out = {i: v for i, v in out.items() if i not in exclude and (among is None or i in among)}
        if self.top and len(out) > self.top:
            out = dict(sorted(out.items(), key=lambda kv: -kv[1])[: self.top])
        return out

    def to_csr(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Rows and columns over ``item_ids`` (the artifact's item order); steps to other items are dropped."""
        n = len(self._ids)
        column = np.full(n, -1, dtype=np.int64)
        own = np.full(len(item_ids), -1, dtype=np.int64)
        for k, iid in enumerate(item_ids):
            row = self._index.get(iid)
            if row is not None:
                column[row] = k
                own[k] = row
        indptr = np.zeros(len(item_ids) + 1, dtype=np.int64)
        cols_parts: list[np.ndarray] = []
        probs_parts: list[np.ndarray] = []
        step = 16_384
        for lo in range(0, len(item_ids), step):
            rows = own[lo : lo + step]
            valid = rows >= 0
            safe = np.where(valid, rows, 0)
            lens = np.where(valid, self._len[safe] if n else 0, 0)
            slot = np.arange(self._width) < lens[:, None]
            to = np.where(slot, column[self._cols[safe]] if n else -1, -1)
            keep = to >= 0
            cols_parts.append(to[keep])
            probs_parts.append((self._counts[safe] / np.where(lens > 0, self._total[safe], 1.0)[:, None])[keep]
                               if n else np.zeros(0))
            indptr[lo + 1 : lo + 1 + len(rows)] = keep.sum(axis=1)
        np.cumsum(indptr, out=indptr)
        return {
            "indptr": indptr,
            "indices": np.concatenate(cols_parts).astype(np.int32) if cols_parts else np.zeros(0, dtype=np.int32),
            "probs": np.concatenate(probs_parts).astype(np.float32) if probs_parts else np.zeros(0, dtype=np.float32),
        }

    def copy(self) -> "TransitionTable":
        """An independent copy (array copies: a few ms for thousands of rows)."""
        table = TransitionTable(max_next=self.max_next, window=self.window, decay=self.decay, span=self.span,
                                span_decay=self.span_decay, backward=self.backward, top=self.top)
        n = len(self._ids)
        table._index = dict(self._index)
        table._ids = list(self._ids)
        table._cols = self._cols[:n].copy()
        table._counts = self._counts[:n].copy()
        table._len = self._len[:n].copy()
        table._total = self._total[:n].copy()
        table._pairs = self._pairs.copy()
        table._compact_at = self._compact_at
        return table

    def state_dict(self) -> dict:
        """The table's settings and counts, as plain dicts built afresh."""
        return {"max_next": self.max_next, "window": self.window, "decay": self.decay, "span": self.span,
                "span_decay": self.span_decay, "backward": self.backward, "top": self.top,
                "next": self.rows(), "total": self.totals()}

    @classmethod
    def from_state_dict(cls, state: dict, **missing) -> "TransitionTable":
        """The table of :meth:`state_dict`; ``missing`` fills settings a state from an older version lacks
        (span, span_decay, backward, top), else they are the constructor's defaults."""
        settings = {"span": int, "span_decay": float, "backward": float, "top": int}
        extra = {k: cast(state[k]) for k, cast in settings.items() if k in state}
        extra.update({k: cast(missing[k]) for k, cast in settings.items() if k not in state and k in missing})
        table = cls(max_next=int(state["max_next"]), window=int(state["window"]), decay=float(state["decay"]), **extra)
        rows = {str(k): [(table._intern(str(j)), float(c)) for j, c in v.items()] for k, v in state["next"].items()}
        for k in state["total"]:
            table._intern(str(k))
        for k in rows:
            table._intern(k)
        table._reserve()
        for k, entries in rows.items():
            if len(entries) > table._width:  # not written by this class: keep the most frequent
                entries = sorted(entries, key=itemgetter(1), reverse=True)[: table.max_next]
            table._set_row(table._index[k], entries)
        for k, v in state["total"].items():
            table._total[table._index[str(k)]] = float(v)
        table._reindex()
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
