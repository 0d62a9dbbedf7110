"""The standing holdout in the trainer: which events it keeps, and the paired evidence it writes for the gate."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from recmodel.artifact import read_manifest, verify_artifact, write_manifest
from recmodel.data import Event, SyntheticStream
from recmodel.export import export_artifact
from recmodel.holdout import is_holdout
from recmodel.serving import ArtifactModel
from recmodel.text import HashingTextEncoder
from recmodel.train import IncrementalTrainer
from services.trainer.holdout import ChampionChallenger, HoldoutBuffer
from services.trainer.metrics import TrainerMetrics


def shuffle_item_vectors(artifact_dir, seed: int = 0) -> None:
    """Break an artifact on purpose: every item gets another item's vector, and the transition table
    leads to other items than the trained ones (the manifest is re-hashed)."""
    path = artifact_dir / "items.npz"
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    perm = np.random.default_rng(seed).permutation(len(arrays["vectors"]))
    arrays["vectors"] = arrays["vectors"][perm]
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    transitions = artifact_dir / "transitions.npz"
    if transitions.exists():
        with np.load(transitions, allow_pickle=False) as npz:
            table = {k: npz[k] for k in npz.files}
        table["indices"] = perm[table["indices"]].astype(table["indices"].dtype)
        with open(transitions, "wb") as fh:
            np.savez(fh, **table)
    write_manifest(artifact_dir, read_manifest(artifact_dir))


class _NotFound(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.NOT_FOUND


class FakeRegistry:
    """get_alias/download over a dict of artifact directories, the two calls the gate evidence needs."""

    def __init__(self) -> None:
        self.dirs: dict[int, object] = {}
        self.production = 0
        self.downloads: list[int] = []

    def get_alias(self, model_name, alias):
        if not self.production:
            raise _NotFound()
        return SimpleNamespace(version=self.production)

    def download(self, model_name, version, dest):
        self.downloads.append(version)
        shutil.copytree(self.dirs[version], dest)
        return verify_artifact(dest)  # as RegistryClient.download: the checked manifest


def _stub_trainer(fraction: float, histories: dict | None = None):
    return SimpleNamespace(holdout_fraction=fraction, is_positive=lambda t: t != "dislike",
                           user_histories=lambda: dict(histories or {}))


def test_buffer_keeps_positive_holdout_events_with_the_history_before_them():
    events = [Event(f"e{n}", f"u{n % 7}", f"i{(n * 13) % 50}", "dislike" if n % 5 == 0 else "click", 1.0,
                    1_000 + n) for n in range(2000)]
    buffer = HoldoutBuffer(size=10_000, max_history=5)
    buffer.observe(_stub_trainer(0.2), events)
    history: dict[str, list] = {}
    expected = []
    for e in events:
        before = history.setdefault(e.user_id, [])
        if before and e.type != "dislike" and is_holdout(e.user_id, e.item_id, 0.2):
            expected.append((e.user_id, tuple(before[-5:]), e.item_id))
        before.append((e.item_id, e.type, e.timestamp_ms))
    assert [(q.user_id, q.history, q.item_id) for q in buffer.queries()] == expected
    assert 250 < len(expected) < 450  # about a fifth of the positive events

    # A restored trainer re-reads the events after its checkpoint: nothing counts twice, and the
    # histories start from the checkpoint's (no duplicated entries).
    at_checkpoint: dict[str, list] = {}
    for e in events[:-300]:
        at_checkpoint.setdefault(e.user_id, []).append((e.item_id, e.type, e.timestamp_ms))
    buffer.observe(_stub_trainer(0.2, {u: h[-5:] for u, h in at_checkpoint.items()}), events[-300:])
    assert [(q.user_id, q.history, q.item_id) for q in buffer.queries()] == expected

    small = HoldoutBuffer(size=50)
    small.observe(_stub_trainer(0.2), events)
    assert [q.item_id for q in small.queries()] == [e[2] for e in expected[-50:]]
    off = HoldoutBuffer(size=50)
    off.observe(_stub_trainer(0.0), events)
    assert len(off) == 0


@pytest.fixture(scope="module")
def trained_with_holdout():
    stream = SyntheticStream(seed=3, n_users=80, n_items=150, n_events=5000)
    trainer = IncrementalTrainer(dim=32, max_len=10, capacity=400, text_encoder=HashingTextEncoder(32), device="cpu",
                                 batch_size=128, replay_batch=32, n_random_negatives=64, holdout_fraction=0.2)
    trainer.upsert_items(stream.items())
    buffer = HoldoutBuffer(size=2000, max_history=50)
    events = list(stream.events())
    for lo in range(0, len(events), 250):
        buffer.observe(trainer, events[lo:lo + 250])
        trainer.train_events(events[lo:lo + 250])
    return trainer, buffer


def test_a_broken_candidate_gets_evidence_that_it_is_worse_and_production_comes_from_cache_or_download(
        trained_with_holdout, tmp_path):
    trainer, buffer = trained_with_holdout
    registry = FakeRegistry()
    metrics = TrainerMetrics(__import__("prometheus_client").CollectorRegistry())
    judge = ChampionChallenger(registry, "m", buffer=buffer, metrics=metrics, download_dir=tmp_path / "dl")

    good = tmp_path / "good"
    export_artifact(trainer, good, model_name="m", metrics={"hr@10": 0.5})
    first = judge.judge(good)
    assert first is not None
    assert not any(k.startswith("gate.") for k in read_manifest(good).metrics)  # no production yet
    judge.remember(1, first)
    registry.dirs[1], registry.production = good, 1

    broken = tmp_path / "broken"
    export_artifact(trainer, broken, model_name="m", metrics={"hr@10": 0.5})
    shuffle_item_vectors(broken)
    judge.judge(broken)
    m = verify_artifact(broken).metrics  # still a valid artifact: the manifest only gained metrics
    assert registry.downloads == []  # production v1 was in the cache
    assert m["gate.production_version"] == 1 and m["gate.n"] == len(buffer) > 200
    assert m["gate.production_hr@10"] > m["gate.candidate_hr@10"] + 0.05
    assert m["gate.diff_upper"] < -0.01 and m["gate.diff_lower"] <= m["gate.diff_upper"]
    assert m["hr@10"] == 0.5
    text = __import__("prometheus_client").generate_latest(metrics.registry).decode()
    assert f'streamrec_trainer_holdout_hit_rate{{role="production"}} {m["gate.production_hr@10"]}' in text
    assert f"streamrec_trainer_holdout_events {float(len(buffer))}" in text

    # A trainer that never exported v1 (restarted, or an operator promoted it) downloads it: same evidence.
    fresh = ChampionChallenger(registry, "m", buffer=buffer, download_dir=tmp_path / "dl")
    again = tmp_path / "again"
    shutil.copytree(broken, again)
    fresh.judge(again)
    assert registry.downloads == [1]
    assert read_manifest(again).metrics["gate.diff_upper"] == pytest.approx(m["gate.diff_upper"])
    assert list((tmp_path / "dl").iterdir()) == []  # the download went once loaded

    # The same model exported twice: identical hits, a zero-width interval, no reason to reject.
    same = tmp_path / "same"
    export_artifact(trainer, same, model_name="m")
    judge.judge(same)
    s = read_manifest(same).metrics
    assert s["gate.diff_lower"] == s["gate.diff_upper"] == 0.0


def test_without_a_reachable_registry_the_artifact_is_registered_without_evidence(trained_with_holdout, tmp_path):
    trainer, buffer = trained_with_holdout

    class Down:
        def get_alias(self, *a):
            raise grpc.RpcError("unreachable")

    out = tmp_path / "a"
    export_artifact(trainer, out, model_name="m")
    assert ChampionChallenger(Down(), "m", buffer=buffer).judge(out) is not None
    assert not any(k.startswith("gate.") for k in verify_artifact(out).metrics)


def test_production_is_scored_once_per_holdout_query_until_another_version_is_production(trained_with_holdout,
                                                                                         tmp_path):
    trainer, buffer = trained_with_holdout
    registry = FakeRegistry()
    judge = ChampionChallenger(registry, "m", buffer=buffer)
    v1 = tmp_path / "v1"
    export_artifact(trainer, v1, model_name="m")
    judge.remember(1, ArtifactModel.load(v1))  # not judged here: no hits of its own yet
    registry.dirs[1], registry.production = v1, 1
    production = judge._cache[1].model
    scored: list[int] = []
    score = production.score
    production.score = lambda histories, *a, **kw: scored.append(len(histories)) or score(histories, *a, **kw)

    first, second = tmp_path / "c1", tmp_path / "c2"
    export_artifact(trainer, first, model_name="m")
    shuffle_item_vectors(first)
    shutil.copytree(first, second)
    judge.judge(first)
    assert sum(scored) == len(buffer)
    judge.judge(second)  # the same holdout queries against the same production: nothing to score again
    assert sum(scored) == len(buffer)
    for key in ("gate.production_hr@10", "gate.candidate_hr@10", "gate.diff_lower", "gate.diff_upper", "gate.n"):
        assert read_manifest(second).metrics[key] == read_manifest(first).metrics[key]

    # Another production version: its hits are its own, scored afresh.
    judge.remember(2, judge._cache[1].model)
    registry.production = 2
    third = tmp_path / "c3"
    shutil.copytree(first, third)
    judge.judge(third)
    assert sum(scored) == 2 * len(buffer)
    assert read_manifest(third).metrics["gate.production_version"] == 2


def test_a_promoted_candidate_brings_the_hits_it_was_judged_with(trained_with_holdout, tmp_path):
    trainer, buffer = trained_with_holdout
    registry = FakeRegistry()
    judge = ChampionChallenger(registry, "m", buffer=buffer)
    v1 = tmp_path / "v1"
    export_artifact(trainer, v1, model_name="m")
    judge.remember(1, judge.judge(v1))
    registry.dirs[1], registry.production = v1, 1

    c2 = tmp_path / "c2"
    export_artifact(trainer, c2, model_name="m")
    shuffle_item_vectors(c2)
    candidate = judge.judge(c2)
    scored: list[int] = []
    score = candidate.score
    candidate.score = lambda histories, *a, **kw: scored.append(len(histories)) or score(histories, *a, **kw)
    judge.remember(2, candidate)  # registered as v2, then promoted
    registry.dirs[2], registry.production = c2, 2

    c3 = tmp_path / "c3"
    export_artifact(trainer, c3, model_name="m")
    judge.judge(c3)
    assert scored == []  # v2's hits on every query came from its own judgment
    m = read_manifest(c3).metrics
    assert m["gate.production_version"] == 2
    assert m["gate.production_hr@10"] == read_manifest(c2).metrics["gate.candidate_hr@10"]

    # The same evidence as a judge that scores v2 afresh (downloaded: nothing carried over).
    fresh = ChampionChallenger(registry, "m", buffer=buffer, download_dir=tmp_path / "dl")
    again = tmp_path / "again"
    export_artifact(trainer, again, model_name="m")
    fresh.judge(again)
    for key in ("gate.production_hr@10", "gate.diff_lower", "gate.diff_upper", "gate.n", "gate.p_value"):
        assert read_manifest(again).metrics[key] == pytest.approx(m[key])

    # A version registered from another candidate object than the one just judged carries nothing over.
    judge.judge(c3)
    judge.remember(3, judge._cache[1].model)
    assert judge._cache[3].hits == {}
