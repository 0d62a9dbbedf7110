"""Leave-last-out full-ranking evaluation.

Per user, events are ordered by timestamp; equal timestamps are put in a random order drawn from a fixed
seed (file order can leak the answer). The last event is the test case, the one before it the
validation case, the rest is training data. The held-out item is ranked among all catalog items the user
has not interacted with (in training + validation); HR@K and NDCG@K are averaged over users.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from recmodel.data.types import Event
from recmodel.evaluate.metrics import hit_rate, ndcg, target_rank
from recmodel.evaluate.protocol import Scorer


@dataclass
class LeaveLastOutSplit:
    train: list[Event]  # time order (ties in the split's random order)
    validation: dict[str, Event] = field(default_factory=dict)
    test: dict[str, Event] = field(default_factory=dict)
    user_train: dict[str, list[Event]] = field(default_factory=dict)


def leave_last_out_split(events: Sequence[Event], *, seed: int = 0, min_events: int = 3) -> LeaveLastOutSplit:
    """Split ``events``; users with fewer than ``min_events`` events only contribute training data."""
    tiebreak = np.random.default_rng(seed).permutation(len(events))
    keyed = sorted(range(len(events)), key=lambda i: (events[i].timestamp_ms, tiebreak[i]))
    per_user: dict[str, list[int]] = {}
    for i in keyed:
        per_user.setdefault(events[i].user_id, []).append(i)
    held_out: set[int] = set()
    split = LeaveLastOutSplit(train=[])
    for user, idx in per_user.items():
        if len(idx) >= min_events:
            split.test[user] = events[idx[-1]]
            split.validation[user] = events[idx[-2]]
            held_out.update(idx[-2:])
            idx = idx[:-2]
        split.user_train[user] = [events[i] for i in idx]
    split.train = [events[i] for i in keyed if i not in held_out]
    return split


def _entries(events: Sequence[Event]) -> list[tuple[str, str, int]]:
    return [(e.item_id, e.type, e.timestamp_ms) for e in events]


def leave_last_out_ranks(
    model: Scorer,
    split: LeaveLastOutSplit,
    item_ids: Sequence[str],
    *,
    stage: str = "test",
    batch_size: int = 256,
) -> dict[str, float]:
    """Rank of each user's held-out item (``stage`` = "test" or "validation") among unseen items."""
    held = split.test if stage == "test" else split.validation
    index = {iid: j for j, iid in enumerate(item_ids)}
    users = [u for u in held if held[u].item_id in index]
    ranks: dict[str, float] = {u: float("inf") for u in held if held[u].item_id not in index}
    for lo in range(0, len(users), batch_size):
        batch = users[lo : lo + batch_size]
        histories = []
        for u in batch:
            hist = list(split.user_train.get(u, []))
            if stage == "test":
                hist.append(split.validation[u])
            histories.append(_entries(hist))
        scores = np.asarray(model.score(histories, [held[u].timestamp_ms for u in batch], item_ids), dtype=np.float64)
        for row, (u, hist) in enumerate(zip(batch, histories)):
            target = index[held[u].item_id]
            seen = np.fromiter((index[h[0]] for h in hist if h[0] in index), dtype=np.int64)
            s = scores[row].copy()
            s[seen] = -np.inf
            s[target] = scores[row, target]
            candidates = np.isfinite(s) | (np.arange(len(s)) == target)
            candidates[seen] = False
            candidates[target] = True
            ranks[u] = target_rank(s, target, np.flatnonzero(candidates))
    return ranks


def evaluate_leave_last_out(
    model: Scorer,
    split: LeaveLastOutSplit,
    item_ids: Sequence[str],
    *,
    k: int = 10,
    stage: str = "test",
    users: Callable[[str, Event], bool] | None = None,
) -> dict[str, float]:
    """HR@k and NDCG@k over users (optionally only those where ``users(user, held_out_event)``)."""
    ranks = leave_last_out_ranks(model, split, item_ids, stage=stage)
    held = split.test if stage == "test" else split.validation
    chosen = [r for u, r in ranks.items() if users is None or users(u, held[u])]
    return {f"hr@{k}": hit_rate(chosen, k), f"ndcg@{k}": ndcg(chosen, k), "users": len(chosen)}
