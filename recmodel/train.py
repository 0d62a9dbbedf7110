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
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from recmodel.checkpoint import TrainerCheckpoint
from recmodel.data.types import DEFAULT_EVENT_WEIGHTS, Event, HistoryEntry, Item
from recmodel.holdout import is_holdout
from recmodel.model import SequentialRecommender, event_type_id
from recmodel.recipe import RECIPE
from recmodel.scoring import TrainerScoring
from recmodel.text import TextEncoder, TextEncoderLike
from recmodel.transitions import TransitionTable
from recmodel.vocab import ItemVocabulary
from recmodel.windows import Token, Window, new_target_windows, sequence_windows, training_tensors

log = logging.getLogger(__name__)

# Keyword arguments of IncrementalTrainer stored under their names and saved with every checkpoint.
HYPERPARAMETERS = (
    "dim", "max_len", "capacity", "seed", "lr", "weight_decay", "batch_size", "replay_batch", "n_random_negatives",
    "replay_size", "replay_history", "use_text", "n_heads", "n_layers", "dropout", "temperature", "steps_per_batch", "id_gate_prior",
    "id_dropout", "holdout_fraction", "full_softmax_items", "transition_weight", "transition_window",
    "transition_decay", "transition_max_next", "transition_span", "transition_span_decay", "transition_backward",
    "transition_top",
)


class _SoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=1)
        ctx.save_for_backward(logp, label)
        return -logp.gather(1, label.unsqueeze(1)).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logp, label = ctx.saved_tensors
        scale = grad / len(label)
        out = logp.exp().mul_(scale)
        out[torch.arange(len(label), device=out.device), label] -= scale
        return out, None


def softmax_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits, label)`` (mean over rows), with its gradient (softmax - one-hot) / rows
    written straight into one new [rows, candidates] buffer. torch's own zero-fills such a buffer for the
    picked log-probabilities and then runs log_softmax's backward over it: two more passes over the
    step's largest tensor. ml-latest-small trains 847 events/s on one thread instead of 784-788.
    Equal to torch's within float rounding (about 1e-10 on the gradients)."""
    return _SoftmaxCrossEntropy.apply(logits, label)


@dataclass(frozen=True)
class TrainStats:
    loss: float
    events: int
    steps: int
    seconds: float
    users_shed: int = 0  # users whose new targets were not trained, to bound a step's cost (train_events' max_users)

    @classmethod
    def of(cls, losses: Sequence[float], events: int, steps: int, seconds: float,
           users_shed: int = 0) -> "TrainStats":
        """Mean of the finite losses (NaN marks a step with nothing to learn)."""
        finite = [x for x in losses if x == x]
        return cls(loss=float(np.mean(finite)) if finite else float("nan"), events=events, steps=steps, seconds=seconds,
                   users_shed=users_shed)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class IncrementalTrainer(TrainerScoring, TrainerCheckpoint):
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
        replay_history: int = RECIPE["replay_history"],
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
        transition_span: int = RECIPE["transition_span"],
        transition_span_decay: float = RECIPE["transition_span_decay"],
        transition_backward: float = RECIPE["transition_backward"],
        transition_top: int = RECIPE["transition_top"],
        event_weights: Mapping[str, float] | None = None,
    ) -> None:
        values = locals()
        for name in HYPERPARAMETERS:
            setattr(self, name, values[name])
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
        # Fused: one kernel over every parameter instead of a loop of small ops per tensor. Adam's step over the
        # 50,000-row ID table took 22 ms on one CPU core, 10% of the stack's trainer; fused, 2.7 ms.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
        self._init_stream_state()

    def _init_stream_state(self) -> None:
        """What the trainer learns from the stream besides weights; all of it is checkpointed."""
        self.transitions = TransitionTable(max_next=self.transition_max_next, window=self.transition_window,
                                           decay=self.transition_decay, span=self.transition_span,
                                           span_decay=self.transition_span_decay, backward=self.transition_backward,
                                           top=self.transition_top)
        self.vocab = ItemVocabulary(self.capacity)
        self._counts = np.zeros(self.capacity + 1, dtype=np.float64)  # positive targets per slot (logQ)
        self._available = np.zeros(self.capacity + 1, dtype=bool)
        self._item_meta: dict[str, tuple[str, tuple[str, ...], str]] = {}  # id -> (title, categories, doc hash)
        self._histories: dict[str, list[HistoryEntry]] = {}
        self._recent_steps: dict[str, list[tuple[str, bool]]] = {}  # (item, is a target) of each history's tail
        self._replay: OrderedDict[str, None] = OrderedDict()
        self._gen = torch.Generator().manual_seed(self.seed)  # negatives, replay draws, row init
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 1)
            self._torch_rng = torch.get_rng_state()  # dropout, kept apart from the global RNG
        self._cuda_rng = None
        self.events_trained = 0
        self.users_shed = 0  # users whose new targets train_events(max_users=...) left to replay
        self.steps = 0
        self.clock_ms = 0  # newest event time seen

    # ------------------------------------------------------------------ config
    def hyperparameters(self) -> dict:
        return {**{name: getattr(self, name) for name in HYPERPARAMETERS}, "event_weights": dict(self.event_weights)}

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
        """Each user's most recent ``max_len`` interactions (what the model reads)."""
        return {u: h[-self.max_len:] for u, h in self._histories.items()}

    def is_positive(self, event_type: str) -> bool:
        return self.event_weights.get(event_type, 0.0) > 0

    def is_target(self, user_id: str, entry: HistoryEntry) -> bool:
        """Whether the model may learn to predict this interaction (positive and not held out)."""
        return self.is_positive(entry[1]) and not is_holdout(user_id, entry[0], self.holdout_fraction)

    def _count_transitions(self, users: Sequence[tuple[str, Sequence[HistoryEntry], Sequence[HistoryEntry]]]) -> None:
        """Count the new steps of each ``(user, history before, new entries)`` in the transition table, in one batch."""
        # The table continues each user's sequence from its last `span` steps: kept from the user's previous
        # batch rather than hashed again for the holdout; rebuilt from the history after a restore.
        span = self.transitions.span
        sequences = []
        for user_id, old, new in users:
            recent = self._recent_steps.get(user_id)
            if recent is None:
                recent = [(e[0], self.is_target(user_id, e)) for e in old[-span:]]
            sequences.append((recent, [(e[0], self.is_target(user_id, e)) for e in new]))
        for (user_id, _, _), recent in zip(users, self.transitions.observe_sequences(sequences)):
            self._recent_steps[user_id] = recent

    # ------------------------------------------------------------------ batches
    def _tokens(self, entries: Sequence[HistoryEntry], user_id: str = "", targets: bool = True) -> list[Token]:
        """(slot, type id, time, is a training target) per known item; ``user_id`` decides the holdout.
        ``targets=False`` for tokens read as input only (encoding a user, the part of a window before its
        first new target): their flag is False, and the holdout hash is not computed for them."""
        out = []
        for entry in entries:
            slot = self.vocab.slot(entry[0])
            if slot:
                out.append((slot, event_type_id(entry[1]), int(entry[2]), targets and self.is_target(user_id, entry)))
        return out

    def _candidates(self, pos_targets: torch.Tensor):
        """(candidate slots, label of each target among them, and for sampled softmax (logit correction per
        candidate, number of in-batch candidates, accidental hits [targets, random negatives]); else None).

        Full softmax over every slot while the catalog is small enough; above that, the batch's targets
        (in-batch negatives) plus ``n_random_negatives`` uniform draws, with the logQ correction for how
        likely each item was to be among the candidates (popular items show up in batches more often).
        """
        n_items = self.vocab.high_water
        if n_items <= self.full_softmax_items:
            return torch.arange(1, n_items + 1, device=self.device), pos_targets - 1, None
        uniq, label = torch.unique(pos_targets, return_inverse=True)
        negatives = torch.randint(1, n_items + 1, (self.n_random_negatives,), generator=self._gen).to(self.device)
        cand = torch.cat([uniq, negatives])
        counts = torch.from_numpy(self._counts[cand.cpu().numpy()]).to(self.device, torch.float32)
        total = float(self._counts.sum())
        p_batch = len(pos_targets) * (counts + 1.0) / (total + n_items)
        correction = -torch.log(torch.clamp(p_batch + self.n_random_negatives / n_items, max=1.0))
        # A random draw that happens to be the row's own target is not a negative (an accidental hit).
        accidental = negatives.unsqueeze(0) == pos_targets.unsqueeze(1)
        return cand, label, (correction, len(uniq), accidental)

    # ------------------------------------------------------------------ one optimisation step
    # Public seams for data-parallel replicas (services.trainer.distributed): which windows this replica
    # trains on, how gradients are combined before the optimiser steps, and how target counts are shared.
    def local_windows(self, windows: list[Window]) -> list[Window]:
        """The windows this trainer computes the step on (all of them, unless a subclass shards them)."""
        return windows

    def sync_gradients(self) -> None:
        """Called after the backward pass, before clipping and the optimiser step."""

    def record_targets(self, slots: np.ndarray) -> None:
        """Count the step's positive targets (logQ correction, ID gates); ``slots`` may repeat."""
        np.add.at(self._counts, slots, 1.0)
        self._update_id_gate(np.unique(slots))

    def train_step(self, windows: list[Window]) -> float:
        """One optimiser step on ``windows``; the loss, or NaN when no window has a target."""
        slots, types, gaps, mask, targets, loss_mask = training_tensors(self.local_windows(windows), self.max_len,
                                                                        self.device)
        if not bool(loss_mask.any()):
            return float("nan")
        pos_targets = targets[loss_mask]
        cand, label, sampled = self._candidates(pos_targets)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self._torch_rng)
            if devices and self._cuda_rng is not None:
                torch.cuda.set_rng_state(self._cuda_rng, self.device)
            self.model.train()
            out = self.model.user_encoder.sequence(self.model.items(slots), types, gaps, mask)[loss_mask]
            loss = softmax_cross_entropy(self._logits(out, cand, sampled), label)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.sync_gradients()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self._torch_rng = torch.get_rng_state()
            if devices:
                self._cuda_rng = torch.cuda.get_rng_state(self.device)
        self.record_targets(pos_targets.cpu().numpy())
        self.steps += 1
        return float(loss.detach())

    def _logits(self, out: torch.Tensor, cand: torch.Tensor, sampled) -> torch.Tensor:
        """[targets, candidates] logits: cosine / temperature plus the candidate's logit correction, added by
        the matrix product itself (no second pass over the step's largest tensor), with accidental hits among
        the random negatives at -inf (in place, on those columns only)."""
        query = out * (1.0 / self.temperature)
        keys = self.model.items(cand)
        if sampled is None:
            return query @ keys.T
        correction, n_batch_targets, accidental = sampled
        logits = torch.addmm(correction, query, keys.T)
        # Masked outside autograd: the softmax gradient at a -inf logit is exactly 0, which is all that
        # recording the fill would give, while recording it on a view of the logits made the backward pass
        # copy the whole [targets, candidates] gradient (CopySlices) and mask it again. Gradients are
        # bit for bit the same; ml-latest-small trains 784-788 events/s on one thread instead of 673-727.
        # Safe in place: the matrix product saved its inputs for backward, not this output.
        logits.detach()[:, n_batch_targets:].masked_fill_(accidental, float("-inf"))
        return logits

    def _replay_segments(self) -> tuple[list[str], np.ndarray]:
        """Users of the replay buffer and the cumulative count of their kept histories' windows."""
        users = list(self._replay)
        sizes = np.fromiter((len(self._histories.get(u, ())) for u in users), dtype=np.int64, count=len(users))
        return users, np.cumsum(-(-np.maximum(sizes - 1, 0) // self.max_len))

    def _replay_windows(self, n: int):
        """``n`` windows drawn uniformly from the replay buffer's kept histories (as an offline epoch would
        cut them, aligned on the most recent interaction), without replacement within the draw."""
        if n <= 0 or not self._replay:
            return []
        users, ends = self._replay_segments()
        total = int(ends[-1]) if len(ends) else 0
        if total == 0:
            return []
        picks = torch.randperm(total, generator=self._gen)[:n].numpy() if n < total else np.arange(total)
        out = []
        for pick in picks:
            i = int(np.searchsorted(ends, pick, side="right"))
            history = self._histories[users[i]]
            end = len(history) - int(ends[i] - 1 - pick) * self.max_len  # ends[i] - 1: the most recent window
            tokens = self._tokens(history[max(0, end - self.max_len - 1):end], users[i])
            if len(tokens) >= 2:
                out.append((tokens, 1))
        return out

    # ------------------------------------------------------------------ training
    def train_events(self, events: Sequence[Event], batch_size: int | None = None,
                     max_users: int | None = None) -> TrainStats:
        """Train on ``events`` (in the given order) in micro-batches of ``batch_size`` events (default: the
        trainer's own). A step trains one window per user of its micro-batch, holding all of that user's
        new targets, so a larger micro-batch costs about as much as its distinct users, not its events.

        ``max_users`` bounds a step's cost when that is too much to keep up with the stream: a step then
        trains the new windows of at most that many of its micro-batch's users, drawn at random (the others
        are counted in ``users_shed``). Every event still enters the catalog, the histories, the transition
        table and the replay buffer, so the windows left out are learnt by replay (:meth:`replay`) once the
        trainer has caught up. (Target counts, which drive the logQ correction and the ID gates, count trained
        targets only, as before.)"""
        start = time.perf_counter()
        losses: list[float] = []
        steps0 = self.steps
        shed0 = self.users_shed
        size = max(1, batch_size or self.batch_size)
        for lo in range(0, len(events), size):
            losses.extend(self._train_chunk(events[lo : lo + size], max_users))
        return TrainStats.of(losses, len(events), self.steps - steps0, time.perf_counter() - start,
                             self.users_shed - shed0)

    def _observe(self, events: Sequence[Event]) -> list[tuple[str, list[HistoryEntry], list[HistoryEntry]]]:
        """Take ``events`` into the catalog, histories, transitions and replay buffer; per user, the history
        before them and the new entries, for building training windows."""
        new_by_user: dict[str, list[HistoryEntry]] = {}
        for e in events:
            if e.item_id not in self.vocab:
                self._allocate(e.item_id, e.timestamp_ms)
            else:
                self.vocab.touch(e.item_id, e.timestamp_ms)
            self.clock_ms = max(self.clock_ms, e.timestamp_ms)
            new_by_user.setdefault(e.user_id, []).append((e.item_id, e.type, int(e.timestamp_ms)))
        out = [(user, self._histories.get(user, []), new) for user, new in new_by_user.items()]
        self._count_transitions(out)
        for user, old, new in out:
            self._histories[user] = (old + new)[-max(self.max_len, self.replay_history) :]
            self._replay[user] = None
            self._replay.move_to_end(user)
        while len(self._replay) > self.replay_size:
            self._replay.popitem(last=False)
        return out

    def _train_chunk(self, chunk: Sequence[Event], max_users: int | None = None) -> list[float]:
        observed = self._observe(chunk)
        if max_users is not None and len(observed) > max_users:
            keep = torch.randperm(len(observed), generator=self._gen)[:max_users].sort().values.tolist()
            self.users_shed += len(observed) - len(keep)
            observed = [observed[i] for i in keep]
        windows = []
        for user, old, new in observed:
            # The windows reach back at most max_len tokens before the first new one: only the tail of the
            # kept history (up to replay_history entries) is read, unless some of it is no longer known.
            tail = old[-self.max_len:]
            # Inputs only: a window's loss starts at its first new token (new_target_windows).
            old_tokens = self._tokens(tail, user, targets=False)
            if len(old_tokens) < len(tail) and len(old) > len(tail):
                old_tokens = self._tokens(old, user, targets=False)[-self.max_len:]
            windows.extend(new_target_windows(old_tokens + self._tokens(new, user), len(old_tokens), self.max_len))
        # A bounded step keeps replay at most half of its new windows, as in a step of the usual batch_size.
        n_replay = self.replay_batch if max_users is None else min(self.replay_batch, len(windows) // 2)
        losses = []
        for _ in range(self.steps_per_batch):
            batch = windows + self._replay_windows(n_replay)
            if batch:
                losses.append(self.train_step(batch))
        self.events_trained += len(chunk)
        return losses

    def replay(self, steps: int) -> TrainStats:
        """Train ``steps`` steps on the replay buffer alone (``replay_batch`` users' recent windows each).

        What the trainer does with idle compute once it has caught up with the stream (or after a
        backfill): more passes over what it has seen, so the served model approaches offline quality.
        """
        start = time.perf_counter()
        steps0 = self.steps
        losses = [self.train_step(batch) for _ in range(steps) if (batch := self._replay_windows(max(self.replay_batch, 1)))]
        return TrainStats.of(losses, 0, self.steps - steps0, time.perf_counter() - start)

    def replay_epoch_steps(self) -> int:
        """Replay steps that draw, on average, every window of the replay buffer's histories once."""
        _, ends = self._replay_segments()
        return -(-int(ends[-1] if len(ends) else 0) // max(self.replay_batch, 1))

    def fit_offline(self, events: Sequence[Event], epochs: int = 10) -> list[float]:
        """Classic offline training: several shuffled epochs over every user's full sequence.

        Used as the reference the streaming model is compared with; histories and counters are
        updated as if the events had been streamed.
        """
        windows = []
        for user, old, new in self._observe(events):
            windows.extend(sequence_windows(self._tokens(old + new, user), self.max_len))
        losses = []
        for _ in range(epochs):
            order = torch.randperm(len(windows), generator=self._gen).tolist()
            epoch_losses = []
            for lo in range(0, len(order), self.batch_size):
                epoch_losses.append(self.train_step([windows[i] for i in order[lo : lo + self.batch_size]]))
            losses.append(float(np.nanmean(epoch_losses)))
        self.events_trained += len(events)
        return losses
