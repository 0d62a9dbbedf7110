"""Scoring and recommending with a trainer's current weights.

:class:`TrainerScoring` is the read side of :class:`recmodel.train.IncrementalTrainer`, with the same
interface as the served model (:class:`recmodel.serving.ArtifactModel`): ``score``, ``recommend``,
``user_vectors``, ``item_vectors``, plus the item table the exporter writes. It reads the trainer's
model, vocabulary, availability flags, histories and transition table, and changes none of them.
"""

from __future__ import annotations

from typing import Collection, Iterable, Sequence

import numpy as np
import torch

from recmodel.data.types import Event, HistoryEntry
from recmodel.windows import inference_tensors


class TrainerScoring:
    """Mixed into IncrementalTrainer, whose constructor sets every attribute used here."""

    @property
    def item_ids(self) -> list[str]:
        return [iid for iid, _ in self.vocab.items()]

    @torch.no_grad()
    def user_vectors(self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int]) -> np.ndarray:
        self.model.eval()
        out = []
        for lo in range(0, len(histories), 512):
            tokens = [self._tokens(h, targets=False) for h in histories[lo : lo + 512]]
            batch = inference_tensors(tokens, now_ms[lo : lo + 512], self.max_len, self.device)
            out.append(self.model.encode(*batch).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    @torch.no_grad()
    def item_vectors(self, item_ids: Sequence[str] | None = None) -> np.ndarray:
        self.model.eval()
        ids = self.item_ids if item_ids is None else item_ids
        slots = torch.tensor([self.vocab.slot(i) for i in ids], dtype=torch.long, device=self.device)
        return self.model.items(slots).float().cpu().numpy()

    def score(
        self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int], item_ids: Sequence[str],
        banned: Collection[str] | None = None,
    ) -> np.ndarray:
        """Scores [B, len(item_ids)] (cosine plus the transition bonus); items outside the vocabulary get -inf.
        The bonus goes to the table's best among ``item_ids`` less ``banned`` (default: each history's items)."""
        users = self.user_vectors(histories, now_ms)
        known = np.array([i in self.vocab for i in item_ids], dtype=bool)
        scores = users @ self.item_vectors(item_ids).T
        if self.transition_weight > 0 and len(self.transitions):
            column = {iid: j for j, iid in enumerate(item_ids)}
            for b, hist in enumerate(histories):
                recent = [h[0] for h in hist]
                never = set(recent) if banned is None else banned
                for iid, value in self.transitions.bonus(recent, exclude=never, among=column).items():
                    j = column.get(iid)
                    if j is not None:
                        scores[b, j] += self.transition_weight * value
        scores[:, ~known] = -np.inf
        return scores

    def recommend(
        self,
        user: str | Sequence[HistoryEntry],
        k: int = 10,
        exclude: Iterable[str] = (),
        *,
        now_ms: int | None = None,
        exclude_seen: bool = True,
    ) -> list[tuple[str, float]]:
        """Top-``k`` available items for a user id (its tracked history) or an explicit history."""
        history = self._histories.get(user, [])[-self.max_len:] if isinstance(user, str) else list(user)
        now = now_ms if now_ms is not None else (history[-1][2] if history else self.clock_ms)
        ids = [iid for iid, slot in self.vocab.items() if self._available[slot]]
        banned = set(exclude) | ({h[0] for h in history} if exclude_seen else set())
        scores = self.score([history], [now], ids, banned=banned)[0]
        order = np.argsort(-scores, kind="stable")
        out = []
        for j in order:
            if ids[j] in banned:
                continue
            out.append((ids[j], float(scores[j])))
            if len(out) == k:
                break
        return out

    def prequential(self, events: Sequence[Event], k: int = 10) -> dict:
        """Test-then-train over ``events``: HR@k / NDCG@k of each window before training on it."""
        from recmodel.evaluate.prequential import prequential_evaluate

        return prequential_evaluate(self, events, k=k, window=self.batch_size)

    def item_table(self) -> dict:
        """Everything the exporter needs about items, ordered by slot."""
        pairs = self.vocab.items()
        ids = [i for i, _ in pairs]
        return {
            "ids": ids,
            "vectors": self.item_vectors(ids),
            "available": np.array([self._available[s] for _, s in pairs], dtype=bool),
            "titles": [self._item_meta.get(i, ("", (), ""))[0] for i in ids],
            "categories": ["|".join(self._item_meta.get(i, ("", (), ""))[1]) for i in ids],
        }
