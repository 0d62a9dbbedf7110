"""Champion/challenger evidence for the registry's promotion gate, from the standing holdout.

The model trains with ``holdout_fraction``: the interactions of the (user, item) pairs that
``recmodel.holdout.is_holdout`` chooses are kept as input but never used as targets, by this model or by
any version before it. ``HoldoutBuffer``
keeps the most recent of them (with the user's history at that moment, as the trainer saw it). At each
export, ``ChampionChallenger.judge`` scores them with the candidate and with the current production
version, and writes the paired result into the artifact's manifest as ``gate.*`` metrics, which the
registry's gate decides on.

Why the exported artifact and not the trainer's in-memory model: both sides then run through the same
code (``recmodel.serving.ArtifactModel``: ONNX Runtime, the exported item table, the same history
featurisation), on exactly the bytes that are registered and that inference would serve, so the paired
difference measures the two models and nothing else. Scoring runs on the CPU provider: the encoder is
small, and a TensorRT engine build per candidate would cost more than the scoring.

Production's artifact comes from an in-memory cache of the versions this trainer exported, or is
downloaded from the registry (after a restart, or when an operator promoted another version).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import grpc
import numpy as np

from recmodel.artifact import read_manifest, write_manifest
from recmodel.data import Event
from recmodel.evaluate.paired import PairedDifference, hits_at_k, paired_difference
from recmodel.holdout import is_holdout
from services.common.aliases import PRODUCTION

logger = logging.getLogger(__name__)

SCORING_PROVIDERS = ["CPUExecutionProvider"]


@dataclass(frozen=True)
class HoldoutQuery:
    user_id: str
    history: tuple[tuple[str, str, int], ...]  # oldest first, before the held-out interaction
    timestamp_ms: int
    item_id: str


class RecentHistories:
    """Histories of recently active users (LRU-bounded), as a served model would have seen them."""

    def __init__(self, max_users: int = 200_000, max_history: int = 50) -> None:
        self.max_users = max_users
        self.max_history = max_history
        self._hist: OrderedDict[str, list[tuple[str, str, int]]] = OrderedDict()

    def append(self, event: Event) -> tuple[tuple[str, str, int], ...]:
        """Record ``event``; returns the user's history before it."""
        hist = self._hist.get(event.user_id)
        if hist is None:
            hist = self._hist[event.user_id] = []
        else:
            self._hist.move_to_end(event.user_id)
        before = tuple(hist)
        hist.append((event.item_id, event.type, int(event.timestamp_ms)))
        del hist[: -self.max_history]
        while len(self._hist) > self.max_users:
            self._hist.popitem(last=False)
        return before

    def reset(self, histories: dict[str, list[tuple[str, str, int]]]) -> None:
        self._hist = OrderedDict((u, list(h)[-self.max_history:]) for u, h in histories.items())
        while len(self._hist) > self.max_users:
            self._hist.popitem(last=False)


class HoldoutBuffer:
    """The ``size`` most recent holdout interactions (positive events chosen by ``is_holdout``)."""

    def __init__(self, size: int = 2000, max_history: int = 50, max_users: int = 200_000) -> None:
        self.size = size
        self.histories = RecentHistories(max_users=max_users, max_history=max_history)
        # Keyed by (user, item, time): an event read twice (re-training after a restore) counts once.
        self._queries: OrderedDict[tuple[str, str, int], HoldoutQuery] = OrderedDict()
        self._trainer = None

    def __len__(self) -> int:
        return len(self._queries)

    def observe(self, trainer, events: Sequence[Event]) -> None:
        """Called with each micro-batch before it is trained (the trainer decides what is held out)."""
        if self.size <= 0:
            return
        if trainer is not self._trainer:
            # A restored trainer (start, or leadership regained) re-reads the events after its checkpoint:
            # start from the histories it holds at the checkpoint, so none of them is counted twice.
            self.histories.reset(trainer.user_histories())
            self._trainer = trainer
        fraction = float(getattr(trainer, "holdout_fraction", 0.0))
        for e in events:
            before = self.histories.append(e)
            if before and trainer.is_positive(e.type) and is_holdout(e.user_id, e.item_id, fraction):
                key = (e.user_id, e.item_id, int(e.timestamp_ms))
                self._queries[key] = HoldoutQuery(e.user_id, before, int(e.timestamp_ms), e.item_id)
                self._queries.move_to_end(key)
        while len(self._queries) > self.size:
            self._queries.popitem(last=False)

    def queries(self) -> list[HoldoutQuery]:
        return list(self._queries.values())


def holdout_hits(model, queries: Sequence[HoldoutQuery], k: int) -> np.ndarray:
    """Per-query hit@k of an ``ArtifactModel``, ranked among the items it would serve (available ones)."""
    catalogue = [str(i) for i in model.item_ids[model.available].tolist()]
    return hits_at_k(model, [q.history for q in queries], [q.timestamp_ms for q in queries],
                     [q.item_id for q in queries], catalogue, k=k)


@dataclass
class _Scored:
    """A loaded ``ArtifactModel`` and its hit@k per holdout query, for the queries scored so far."""

    model: object
    hits: dict[HoldoutQuery, bool] = field(default_factory=dict)


class ChampionChallenger:
    """Scores candidate and production on the holdout and records the paired evidence in the manifest."""

    def __init__(self, client, model_name: str, *, buffer: HoldoutBuffer, k: int = 10, confidence: float = 0.95,
                 cache_versions: int = 3, download_dir: str | Path | None = None, metrics=None,
                 scoring_threads: int = 0) -> None:
        self.client = client
        # ONNX Runtime threads for scoring (0: one per core), which sleep between runs instead of spinning:
        # the gate runs beside training, on the same cores.
        self.scoring_threads = scoring_threads
        self.model_name = model_name
        self.buffer = buffer
        self.k = k
        self.confidence = confidence
        self.cache_versions = max(1, cache_versions)
        self.download_dir = Path(download_dir) if download_dir else None
        self.metrics = metrics
        # version -> the loaded ArtifactModel and its hit per holdout query as scored so far: between two
        # exports production rarely changes and most queries are still in the buffer, so only new ones are
        # scored; and a candidate that is registered and then promoted brings the hits it was judged with, so
        # with versions promoted one after the other each query is scored once per version, not twice.
        self._cache: OrderedDict[int, _Scored] = OrderedDict()
        self._judged: _Scored | None = None  # the last candidate judged, until it is registered

    def observe(self, trainer, events: Sequence[Event]) -> None:
        self.buffer.observe(trainer, events)

    def remember(self, version: int, model) -> None:
        """Keep what was just registered as ``version``: it may be production at the next export."""
        judged, self._judged = self._judged, None
        if model is None or not version:
            return
        self._keep(int(version), judged if judged is not None and judged.model is model else _Scored(model))

    def _keep(self, version: int, scored: _Scored) -> None:
        self._cache[version] = scored
        self._cache.move_to_end(version)
        while len(self._cache) > self.cache_versions:
            self._cache.popitem(last=False)

    def judge(self, artifact_dir: str | Path, queries: Sequence[HoldoutQuery] | None = None):
        """Add ``gate.*`` metrics to the manifest of the (not yet registered) artifact in ``artifact_dir``.

        ``queries`` defaults to the buffer's; a caller judging off the training thread passes the ones it
        took when it exported, since the buffer goes on changing with every micro-batch. Returns the loaded
        candidate (for ``remember``), or None when it could not be loaded. Never raises for want of
        evidence: without it the registry holds the version and decides on staleness.
        """
        from recmodel.serving import ArtifactModel

        start = time.perf_counter()
        self._judged = None
        try:
            candidate = ArtifactModel.load(artifact_dir, providers=SCORING_PROVIDERS,
                                           session_options=self._session_options())
        except Exception:  # noqa: BLE001 - registration goes on; the gate will hold it for want of evidence
            logger.warning("cannot load the exported artifact for the gate", exc_info=True)
            return None
        queries = self.buffer.queries() if queries is None else list(queries)
        if self.metrics is not None:
            self.metrics.holdout_events.set(len(queries))
        if not queries:
            logger.info("no holdout events yet: registering without gate evidence")
            return candidate
        try:
            production_version, production = self._production()
        except Exception as exc:  # noqa: BLE001 - the registry may be restarting; the gate holds the version
            logger.warning("cannot fetch the production version for the gate", extra={"error": str(exc)})
            return candidate
        cand_hits = holdout_hits(candidate, queries, self.k)
        self._judged = _Scored(candidate, dict(zip(queries, cand_hits.tolist())))
        if self.metrics is not None:
            self.metrics.holdout_hit_rate.labels(role="candidate").set(float(cand_hits.mean()))
        if production is None:
            return candidate  # the first version: nothing to compare with
        prod_hits = self._hits_of_production(production, queries)
        result = paired_difference(cand_hits, prod_hits, self.confidence)
        if self.metrics is not None:
            self.metrics.holdout_hit_rate.labels(role="production").set(result.production_rate)
        self._write(artifact_dir, production_version, result)
        logger.info("paired holdout evidence", extra={
            "production_version": production_version, "n": result.n,
            "candidate": round(result.candidate_rate, 4), "production": round(result.production_rate, 4),
            "diff_lower": round(result.lower, 4), "diff_upper": round(result.upper, 4),
            "seconds": round(time.perf_counter() - start, 2)})
        return candidate

    def _hits_of_production(self, production: _Scored, queries: Sequence[HoldoutQuery]) -> np.ndarray:
        known = production.hits
        new = [q for q in dict.fromkeys(queries) if q not in known]
        if new:
            known.update(zip(new, holdout_hits(production.model, new, self.k).tolist()))
        hits = np.array([known[q] for q in queries], dtype=bool)
        production.hits = {q: known[q] for q in queries}  # only what the buffer still holds
        return hits

    def gate_metrics(self, production_version: int, result: PairedDifference) -> dict[str, float]:
        metric = f"hr@{self.k}"
        return {
            "gate.production_version": float(production_version),
            "gate.n": float(result.n),
            f"gate.candidate_{metric}": result.candidate_rate,
            f"gate.production_{metric}": result.production_rate,
            "gate.diff_lower": result.lower,
            "gate.diff_upper": result.upper,
            "gate.confidence": result.confidence,
            "gate.candidate_only": float(result.candidate_only),
            "gate.production_only": float(result.production_only),
            "gate.p_value": result.p_value,
        }

    def _write(self, artifact_dir: str | Path, production_version: int, result: PairedDifference) -> None:
        # The manifest is not among the hashed files, so adding metrics keeps the artifact valid.
        manifest = read_manifest(artifact_dir)
        manifest.metrics.update(self.gate_metrics(production_version, result))
        write_manifest(artifact_dir, manifest, hash_files=False)

    def _production(self) -> tuple[int, _Scored | None]:
        """(version, loaded model and its hits) of the current production version; (0, None) when there is none."""
        try:
            version = int(self.client.get_alias(self.model_name, PRODUCTION).version)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return 0, None
            raise
        scored = self._cache.get(version)
        if scored is None:
            scored = _Scored(self._download(version))
        self._keep(version, scored)
        return version, scored

    def _session_options(self):
        from recmodel.serving import serving_session_options

        return serving_session_options(self.scoring_threads)

    def _download(self, version: int):
        from recmodel.serving import ArtifactModel

        parent = self.download_dir
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="production-", dir=parent))
        try:
            manifest = self.client.download(self.model_name, version, tmp / "artifact")  # digest checked
            # ONNX Runtime holds the model in memory once loaded, so the files can go.
            model = ArtifactModel.load(tmp / "artifact", providers=SCORING_PROVIDERS, manifest=manifest,
                                       session_options=self._session_options())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("downloaded the production version for the gate", extra={"model_version": version})
        return model
