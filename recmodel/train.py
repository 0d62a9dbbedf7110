"""Incremental (streaming) training of :class:`~recmodel.model.SequentialRecommender`.

The trainer consumes events in the order given (time order) in micro-batches of ``batch_size`` events.
For every user in a micro-batch it builds the window of their last ``max_len`` interactions plus the new
ones and trains the next-item objective on the new positions; ``replay_batch`` windows of recently
active users (the replay buffer) are trained alongside, so the model keeps what it learnt while it
follows the stream. The loss is a sampled softmax over the batch's target items (in-batch negatives)
plus ``n_random_negatives`` uniformly drawn items, with the logQ correction for how likely each item was
to be drawn as a candidate (popular items show up in batches more often).

The whole state (model, optimiser, vocabulary, replay buffer, random generators, histories, counters)
is checkpointed with :meth:`IncrementalTrainer.save_checkpoint` and restored bit-exactly.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from recmodel.atomic import atomic_writer
from recmodel.data.types import DEFAULT_EVENT_WEIGHTS, Event, Item
from recmodel.holdout import is_holdout
from recmodel.model import SequentialRecommender, event_type_id, gap_buckets
from recmodel.recipe import RECIPE
from recmodel.text import HashingTextEncoder, TextEncoder, TextEncoderLike
from recmodel.transitions import TransitionTable
from recmodel.vocab import ItemVocabulary

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
HistoryEntry = tuple[str, str, int]  # (item_id, event_type, timestamp_ms)


@dataclass(frozen=True)
class TrainStats:
    loss: float
    events: int
    steps: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class IncrementalTrainer:
    """Streaming trainer; every hyperparameter is a keyword argument stored under the same name."""

    def __init__(
        self,
        *,
        dim: int = RECIPE["dim"],
        max_len: int = RECIPE["max_len"],
        capacity: int = 50_000,
        text_encoder: TextEncoderLike | None = None,
        device: str | torch.device | None = None,
        seed: int = 0,
        lr: float = RECIPE["lr"],
        weight_decay: float = 0.0,
        batch_size: int = RECIPE["batch_size"],
        replay_batch: int = RECIPE["replay_batch"],
        n_random_negatives: int = RECIPE["n_random_negatives"],
        replay_size: int = 20_000,
        use_text: bool = True,
        n_heads: int = RECIPE["n_heads"],
        n_layers: int = RECIPE["n_layers"],
        dropout: float = RECIPE["dropout"],
        temperature: float = RECIPE["temperature"],
        steps_per_batch: int = 1,
        id_gate_prior: float = RECIPE["id_gate_prior"],
        id_dropout: float = RECIPE["id_dropout"],
        holdout_fraction: float = 0.0,
        full_softmax_items: int = RECIPE["full_softmax_items"],
        transition_weight: float = RECIPE["transition_weight"],
        transition_window: int = RECIPE["transition_window"],
        transition_decay: float = RECIPE["transition_decay"],
        transition_max_next: int = RECIPE["transition_max_next"],
        event_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.dim = dim
        self.max_len = max_len
        self.capacity = capacity
        self.seed = seed
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.replay_batch = replay_batch
        self.n_random_negatives = n_random_negatives
        self.replay_size = replay_size
        self.use_text = use_text
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.dropout = dropout
        self.temperature = temperature
        self.steps_per_batch = steps_per_batch
        self.id_gate_prior = id_gate_prior
        self.id_dropout = id_dropout
        self.holdout_fraction = holdout_fraction
        self.full_softmax_items = full_softmax_items
        self.transition_weight = transition_weight
        self.transitions = TransitionTable(max_next=transition_max_next, window=transition_window, decay=transition_decay)
        self.event_weights = dict(event_weights or DEFAULT_EVENT_WEIGHTS)
        self.device = torch.device(device) if device is not None else default_device()
        self._text_encoder = text_encoder
        text_dim = text_encoder.dim if text_encoder is not None else TextEncoder.dim
        self.text_encoder_name = text_encoder.name if text_encoder is not None else TextEncoder.name

        self.model = SequentialRecommender(
            capacity=capacity, dim=dim, max_len=max_len, text_dim=text_dim, use_text=use_text,
            n_heads=n_heads, n_layers=n_layers, dropout=dropout, temperature=temperature, seed=seed,
            id_dropout=id_dropout,
        ).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.vocab = ItemVocabulary(capacity)
        self._counts = np.zeros(capacity + 1, dtype=np.float64)  # positive targets per slot (logQ)
        self._available = np.zeros(capacity + 1, dtype=bool)
        self._item_meta: dict[str, tuple[str, tuple[str, ...], str]] = {}  # id -> (title, categories, doc hash)
        self._histories: dict[str, list[HistoryEntry]] = {}
        self._replay: OrderedDict[str, None] = OrderedDict()
        self._gen = torch.Generator().manual_seed(seed)  # negatives, replay draws, row init
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self._torch_rng = torch.get_rng_state()  # dropout, kept apart from the global RNG
        self._cuda_rng = None
        self.events_trained = 0
        self.steps = 0
        self.clock_ms = 0  # newest event time seen

    # ------------------------------------------------------------------ config
    def hyperparameters(self) -> dict:
        return {
            "dim": self.dim, "max_len": self.max_len, "capacity": self.capacity, "seed": self.seed,
            "lr": self.lr, "weight_decay": self.weight_decay, "batch_size": self.batch_size,
            "replay_batch": self.replay_batch, "n_random_negatives": self.n_random_negatives,
            "replay_size": self.replay_size, "use_text": self.use_text, "n_heads": self.n_heads,
            "n_layers": self.n_layers, "dropout": self.dropout, "temperature": self.temperature,
            "steps_per_batch": self.steps_per_batch, "id_gate_prior": self.id_gate_prior, "id_dropout": self.id_dropout,
            "holdout_fraction": self.holdout_fraction, "full_softmax_items": self.full_softmax_items,
            "transition_weight": self.transition_weight, "transition_window": self.transitions.window,
            "transition_decay": self.transitions.decay, "transition_max_next": self.transitions.max_next,
            "event_weights": dict(self.event_weights),
        }

    @property
    def text_encoder(self) -> TextEncoderLike:
        if self._text_encoder is None:
            self._text_encoder = TextEncoder()
        return self._text_encoder

    # ------------------------------------------------------------------ catalog
    def _allocate(self, item_id: str, time_ms: int) -> int:
        slot, evicted = self.vocab.add(item_id, time_ms)
        if evicted is not None or item_id not in self._item_meta:
            if evicted is not None:
                self._item_meta.pop(evicted, None)
                self.transitions.forget(evicted)
            self._reset_slot(slot)
            self._item_meta[item_id] = ("", (), "")
            self._available[slot] = True
        return slot

    def _reset_slot(self, slot: int) -> None:
        with torch.no_grad():
            emb = self.model.items.id_emb.weight
            emb[slot] = (torch.randn(self.dim, generator=self._gen) * 0.01).to(self.device)
            self.model.items.text_table[slot] = 0.0
            state = self.optimizer.state.get(emb)
            if state:
                state["exp_avg"][slot] = 0.0
                state["exp_avg_sq"][slot] = 0.0
        self._counts[slot] = 0.0
        self._update_id_gate(np.array([slot]))

    def _update_id_gate(self, slots: np.ndarray) -> None:
        if not self.use_text or self.id_gate_prior <= 0:
            return
        n = self._counts[slots]
        gate = torch.from_numpy(n / (n + self.id_gate_prior)).to(self.device, torch.float32)
        with torch.no_grad():
            self.model.items.id_gate[torch.from_numpy(slots).to(self.device)] = gate

    def upsert_items(self, items: Iterable[Item]) -> None:
        """Add or update catalog items; new or changed texts are embedded in one batch."""
        to_embed: list[tuple[int, str, str]] = []
        for item in items:
            slot = self._allocate(item.item_id, self.clock_ms)
            doc = item.document()
            digest = hashlib.sha256(doc.encode()).hexdigest()[:16] if self.use_text else ""
            old = self._item_meta[item.item_id]
            self._item_meta[item.item_id] = (item.title, tuple(item.categories), digest)
            self._available[slot] = item.available
            if self.use_text and digest != old[2]:
                to_embed.append((slot, item.item_id, doc))
        if to_embed:
            vectors = self.text_encoder.encode([d for _, _, d in to_embed])
            slots = torch.tensor([s for s, _, _ in to_embed], dtype=torch.long, device=self.device)
            with torch.no_grad():
                self.model.items.text_table[slots] = torch.from_numpy(vectors).to(self.device)

    # ------------------------------------------------------------------ histories
    def user_histories(self) -> dict[str, list[HistoryEntry]]:
        return {u: list(h) for u, h in self._histories.items()}

    def is_positive(self, event_type: str) -> bool:
        return self.event_weights.get(event_type, 0.0) > 0

    def is_target(self, user_id: str, entry: HistoryEntry) -> bool:
        """Whether the model may learn to predict this interaction (positive and not held out)."""
        item_id, etype, ts = entry
        return self.is_positive(etype) and not is_holdout(user_id, item_id, ts, self.holdout_fraction)

    def _count_transitions(self, user_id: str, old: Sequence[HistoryEntry], new: Sequence[HistoryEntry]) -> None:
        self.transitions.observe_sequence(old[-1][0] if old else None,
                                          ((e[0], self.is_target(user_id, e)) for e in new))

    # ------------------------------------------------------------------ batches
    def _tokens(self, entries: Sequence[HistoryEntry], user_id: str = "") -> list[tuple[int, int, int, bool]]:
        """(slot, type id, time, is a training target) per known item; ``user_id`` decides the holdout."""
        out = []
        for entry in entries:
            slot = self.vocab.slot(entry[0])
            if slot:
                out.append((slot, event_type_id(entry[1]), int(entry[2]), self.is_target(user_id, entry)))
        return out

    def _training_batch(self, windows: list[tuple[list[tuple[int, int, int, bool]], int]]):
        """Left-padded tensors; window = (tokens, index of the first token that is a training target)."""
        L = self.max_len
        B = len(windows)
        slots = np.zeros((B, L), dtype=np.int64)
        types = np.zeros((B, L), dtype=np.int64)
        gaps = np.zeros((B, L), dtype=np.int64)
        targets = np.zeros((B, L), dtype=np.int64)
        loss_mask = np.zeros((B, L), dtype=bool)
        for b, (tokens, first_target) in enumerate(windows):
            tok = tokens[-(L + 1) :]
            first_target = max(1, first_target - (len(tokens) - len(tok)))
            n = len(tok) - 1
            arr = np.array([(s, t, ts, p) for s, t, ts, p in tok], dtype=np.int64)
            slots[b, L - n :] = arr[:-1, 0]
            types[b, L - n :] = arr[:-1, 1]
            gaps[b, L - n :] = gap_buckets(arr[1:, 2] - arr[:-1, 2])
            targets[b, L - n :] = arr[1:, 0]
            use = np.arange(1, n + 1) >= first_target
            loss_mask[b, L - n :] = use & (arr[1:, 3] > 0)
        mask = slots > 0
        dev = self.device
        return (
            torch.from_numpy(slots).to(dev), torch.from_numpy(types).to(dev), torch.from_numpy(gaps).to(dev),
            torch.from_numpy(mask).to(dev), torch.from_numpy(targets).to(dev), torch.from_numpy(loss_mask).to(dev),
        )

    def _candidates(self, pos_targets: torch.Tensor):
        """(candidate slots, label of each target among them, logit correction or None).

        Full softmax over every slot while the catalog is small enough; above that, the batch's targets
        (in-batch negatives) plus ``n_random_negatives`` uniform draws, with the logQ correction for how
        likely each item was to be among the candidates (popular items show up in batches more often).
        """
        n_items = self.vocab.high_water
        if n_items <= self.full_softmax_items:
            return torch.arange(1, n_items + 1, device=self.device), pos_targets - 1, None, None
        uniq, label = torch.unique(pos_targets, return_inverse=True)
        negatives = torch.randint(1, n_items + 1, (self.n_random_negatives,), generator=self._gen).to(self.device)
        cand = torch.cat([uniq, negatives])
        counts = torch.from_numpy(self._counts[cand.cpu().numpy()]).to(self.device, torch.float32)
        total = float(self._counts.sum())
        p_batch = len(pos_targets) * (counts + 1.0) / (total + n_items)
        correction = -torch.log(torch.clamp(p_batch + self.n_random_negatives / n_items, max=1.0))
        # A random draw that happens to be the row's own target is not a negative.
        accidental = torch.zeros(len(pos_targets), len(cand), dtype=torch.bool, device=self.device)
        accidental[:, len(uniq):] = negatives.unsqueeze(0) == pos_targets.unsqueeze(1)
        return cand, label, correction, accidental

    def _step(self, windows) -> float:
        slots, types, gaps, mask, targets, loss_mask = self._training_batch(windows)
        if not bool(loss_mask.any()):
            return float("nan")
        pos_targets = targets[loss_mask]
        cand, label, correction, accidental = self._candidates(pos_targets)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self._torch_rng)
            if devices and self._cuda_rng is not None:
                torch.cuda.set_rng_state(self._cuda_rng, self.device)
            self.model.train()
            out = self.model.user_encoder.sequence(self.model.items(slots), types, gaps, mask)[loss_mask]
            logits = out @ self.model.items(cand).T / self.temperature
            if correction is not None:
                logits = (logits + correction).masked_fill(accidental, float("-inf"))
            loss = F.cross_entropy(logits, label)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self._torch_rng = torch.get_rng_state()
            if devices:
                self._cuda_rng = torch.cuda.get_rng_state(self.device)
        touched = pos_targets.cpu().numpy()
        np.add.at(self._counts, touched, 1.0)
        self._update_id_gate(np.unique(touched))
        self.steps += 1
        return float(loss.detach())

    def _replay_windows(self, n: int):
        if n <= 0 or not self._replay:
            return []
        users = list(self._replay)
        picks = torch.randint(0, len(users), (min(n, len(users)),), generator=self._gen).tolist()
        out = []
        for i in picks:
            tokens = self._tokens(self._histories.get(users[i], []), users[i])
            if len(tokens) >= 2:
                out.append((tokens, 1))
        return out

    # ------------------------------------------------------------------ training
    def train_events(self, events: Sequence[Event]) -> TrainStats:
        """Train on ``events`` (in the given order) in micro-batches of ``batch_size`` events."""
        start = time.perf_counter()
        losses: list[float] = []
        steps0 = self.steps
        for lo in range(0, len(events), self.batch_size):
            losses.extend(self._train_chunk(events[lo : lo + self.batch_size]))
        seconds = time.perf_counter() - start
        finite = [x for x in losses if x == x]
        return TrainStats(
            loss=float(np.mean(finite)) if finite else float("nan"),
            events=len(events), steps=self.steps - steps0, seconds=seconds,
        )

    def _train_chunk(self, chunk: Sequence[Event]) -> list[float]:
        new_by_user: dict[str, list[HistoryEntry]] = {}
        for e in chunk:
            if e.item_id not in self.vocab:
                self._allocate(e.item_id, e.timestamp_ms)
            else:
                self.vocab.touch(e.item_id, e.timestamp_ms)
            self.clock_ms = max(self.clock_ms, e.timestamp_ms)
            new_by_user.setdefault(e.user_id, []).append((e.item_id, e.type, int(e.timestamp_ms)))
        windows = []
        for user, new in new_by_user.items():
            old = self._histories.get(user, [])
            self._count_transitions(user, old, new)
            tokens = self._tokens(old + new, user)
            n_old = len(tokens) - len(self._tokens(new, user))
            # Windows of at most max_len inputs, each ending at a new target.
            end = len(tokens)
            while end > max(n_old, 1):
                lo = max(0, end - self.max_len - 1)
                windows.append((tokens[lo:end], max(1, n_old - lo)))
                end = lo + 1 if lo > 0 else 0
            hist = (old + new)[-self.max_len :]
            self._histories[user] = hist
            self._replay[user] = None
            self._replay.move_to_end(user)
        while len(self._replay) > self.replay_size:
            self._replay.popitem(last=False)
        losses = []
        for _ in range(self.steps_per_batch):
            batch = windows + self._replay_windows(self.replay_batch)
            if batch:
                losses.append(self._step(batch))
        self.events_trained += len(chunk)
        return losses

    def replay(self, steps: int) -> TrainStats:
        """Train ``steps`` steps on the replay buffer alone (``replay_batch`` users' recent windows each).

        What the trainer does with idle compute once it has caught up with the stream (or after a
        backfill): more passes over what it has seen, so the served model approaches offline quality.
        """
        start = time.perf_counter()
        steps0 = self.steps
        losses = [self._step(batch) for _ in range(steps) if (batch := self._replay_windows(max(self.replay_batch, 1)))]
        finite = [x for x in losses if x == x]
        return TrainStats(
            loss=float(np.mean(finite)) if finite else float("nan"),
            events=0, steps=self.steps - steps0, seconds=time.perf_counter() - start,
        )

    def replay_epoch_steps(self) -> int:
        """Replay steps that draw, on average, every user in the replay buffer once."""
        return -(-len(self._replay) // max(self.replay_batch, 1))

    def fit_offline(self, events: Sequence[Event], epochs: int = 10) -> list[float]:
        """Classic offline training: several shuffled epochs over every user's full sequence.

        Used as the reference the streaming model is compared with; histories and counters are
        updated as if the events had been streamed.
        """
        seqs: dict[str, list[HistoryEntry]] = {}
        for e in events:
            if e.item_id not in self.vocab:
                self._allocate(e.item_id, e.timestamp_ms)
            else:
                self.vocab.touch(e.item_id, e.timestamp_ms)
            self.clock_ms = max(self.clock_ms, e.timestamp_ms)
            seqs.setdefault(e.user_id, []).append((e.item_id, e.type, int(e.timestamp_ms)))
        windows = []
        for user, seq in seqs.items():
            self._count_transitions(user, self._histories.get(user, []), seq)
            tokens = self._tokens(self._histories.get(user, []) + seq, user)
            for lo in range(0, max(len(tokens) - 1, 0), self.max_len):
                windows.append((tokens[lo : lo + self.max_len + 1], 1))
            self._histories[user] = (self._histories.get(user, []) + seq)[-self.max_len :]
            self._replay[user] = None
            self._replay.move_to_end(user)
        while len(self._replay) > self.replay_size:
            self._replay.popitem(last=False)
        losses = []
        for _ in range(epochs):
            order = torch.randperm(len(windows), generator=self._gen).tolist()
            epoch_losses = []
            for lo in range(0, len(order), self.batch_size):
                epoch_losses.append(self._step([windows[i] for i in order[lo : lo + self.batch_size]]))
            losses.append(float(np.nanmean(epoch_losses)))
        self.events_trained += len(events)
        return losses

    # ------------------------------------------------------------------ scoring
    @property
    def item_ids(self) -> list[str]:
        return [iid for iid, _ in self.vocab.items()]

    def _inference_batch(self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int]):
        L = self.max_len
        B = len(histories)
        slots = np.zeros((B, L), dtype=np.int64)
        types = np.zeros((B, L), dtype=np.int64)
        gaps = np.zeros((B, L), dtype=np.int64)
        for b, (hist, now) in enumerate(zip(histories, now_ms)):
            tok = self._tokens(hist)[-L:]
            if not tok:
                continue
            n = len(tok)
            arr = np.array([t[:3] for t in tok], dtype=np.int64)
            slots[b, L - n :] = arr[:, 0]
            types[b, L - n :] = arr[:, 1]
            nxt = np.append(arr[1:, 2], int(now))
            gaps[b, L - n :] = gap_buckets(nxt - arr[:, 2])
        dev = self.device
        return (torch.from_numpy(slots).to(dev), torch.from_numpy(types).to(dev),
                torch.from_numpy(gaps).to(dev), torch.from_numpy(slots > 0).to(dev))

    @torch.no_grad()
    def user_vectors(self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int]) -> np.ndarray:
        self.model.eval()
        out = []
        for lo in range(0, len(histories), 512):
            batch = self._inference_batch(histories[lo : lo + 512], now_ms[lo : lo + 512])
            out.append(self.model.encode(*batch).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    @torch.no_grad()
    def item_vectors(self, item_ids: Sequence[str] | None = None) -> np.ndarray:
        self.model.eval()
        ids = self.item_ids if item_ids is None else item_ids
        slots = torch.tensor([self.vocab.slot(i) for i in ids], dtype=torch.long, device=self.device)
        return self.model.items(slots).float().cpu().numpy()

    def score(
        self, histories: Sequence[Sequence[HistoryEntry]], now_ms: Sequence[int], item_ids: Sequence[str]
    ) -> np.ndarray:
        """Scores [B, len(item_ids)] (cosine plus the transition bonus); items outside the vocabulary get -inf."""
        users = self.user_vectors(histories, now_ms)
        known = np.array([i in self.vocab for i in item_ids], dtype=bool)
        scores = users @ self.item_vectors(item_ids).T
        if self.transition_weight > 0 and len(self.transitions):
            column = {iid: j for j, iid in enumerate(item_ids)}
            for b, hist in enumerate(histories):
                for iid, value in self.transitions.bonus([h[0] for h in hist]).items():
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
        history = self._histories.get(user, []) if isinstance(user, str) else list(user)
        now = now_ms if now_ms is not None else (history[-1][2] if history else self.clock_ms)
        ids = [iid for iid, slot in self.vocab.items() if self._available[slot]]
        scores = self.score([history], [now], ids)[0]
        banned = set(exclude) | ({h[0] for h in history} if exclude_seen else set())
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

    # ------------------------------------------------------------------ export helpers
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

    # ------------------------------------------------------------------ checkpoints
    def _state(self, extra: dict | None) -> dict:
        hw = self.vocab.high_water
        model_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items() if k != "items.text_table"}
        return {
            "format": CHECKPOINT_FORMAT,
            "hyperparameters": self.hyperparameters(),
            "device": str(self.device),
            "text_encoder": {"name": self.text_encoder_name, "dim": self.model.text_dim},
            "model": model_state,
            "text_table": self.model.items.text_table[: hw + 1].detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "vocab": {**self.vocab.state_dict(), "last_seen": torch.from_numpy(self.vocab.state_dict()["last_seen"])},
            "counts": torch.from_numpy(self._counts.copy()),
            "available": torch.from_numpy(self._available.copy()),
            "item_meta": {k: [v[0], list(v[1]), v[2]] for k, v in self._item_meta.items()},
            "histories": {u: [list(e) for e in h] for u, h in self._histories.items()},
            "replay": list(self._replay),
            "transitions": self.transitions.state_dict(),
            "gen": self._gen.get_state(),
            "torch_rng": self._torch_rng.clone(),
            "cuda_rng": None if self._cuda_rng is None else self._cuda_rng.cpu().clone(),
            "events_trained": self.events_trained,
            "steps": self.steps,
            "clock_ms": self.clock_ms,
            "extra": extra or {},
        }

    def save_checkpoint(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write the whole trainer state atomically (temp file in the same directory + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as fh:
            torch.save(self._state(extra), fh)
        return path

    @classmethod
    def load_checkpoint(
        cls,
        path: str | Path,
        *,
        text_encoder: TextEncoderLike | None = None,
        device: str | torch.device | None = None,
    ) -> tuple["IncrementalTrainer", dict]:
        """Restore a trainer saved by :meth:`save_checkpoint`; returns ``(trainer, extra)``."""
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: unsupported checkpoint format {state.get('format')!r}")
        enc_info = state["text_encoder"]
        if text_encoder is None and enc_info["name"] == HashingTextEncoder.name:
            text_encoder = HashingTextEncoder(enc_info["dim"])
        if text_encoder is not None and text_encoder.dim != enc_info["dim"]:
            raise ValueError(f"text encoder dim {text_encoder.dim} != checkpoint's {enc_info['dim']}")
        trainer = cls(**state["hyperparameters"], text_encoder=text_encoder, device=device)
        trainer.text_encoder_name = enc_info["name"]
        missing = trainer.model.load_state_dict(state["model"], strict=False)
        if missing.unexpected_keys or set(missing.missing_keys) - {"items.text_table"}:
            raise ValueError(f"{path}: model state does not match: {missing}")
        table = state["text_table"]
        with torch.no_grad():
            trainer.model.items.text_table[: len(table)] = table.to(trainer.device)
        trainer.optimizer.load_state_dict(state["optimizer"])
        vocab_state = dict(state["vocab"])
        vocab_state["last_seen"] = vocab_state["last_seen"].numpy()
        trainer.vocab = ItemVocabulary.from_state_dict(vocab_state)
        trainer._counts = state["counts"].numpy().copy()
        trainer._available = state["available"].numpy().copy()
        trainer._item_meta = {k: (v[0], tuple(v[1]), v[2]) for k, v in state["item_meta"].items()}
        trainer._histories = {u: [(e[0], e[1], int(e[2])) for e in h] for u, h in state["histories"].items()}
        trainer._replay = OrderedDict((u, None) for u in state["replay"])
        if "transitions" in state:
            trainer.transitions = TransitionTable.from_state_dict(state["transitions"])
        trainer._gen.set_state(state["gen"])
        trainer._torch_rng = state["torch_rng"]
        trainer._cuda_rng = state["cuda_rng"] if trainer.device.type == "cuda" else None
        trainer.events_trained = int(state["events_trained"])
        trainer.steps = int(state["steps"])
        trainer.clock_ms = int(state["clock_ms"])
        return trainer, dict(state["extra"])
