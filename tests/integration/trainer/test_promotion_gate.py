"""The promotion gate on the real trainer and the real registry: candidate and production judged on the
same holdout events. A broken candidate is rejected every time, with paired evidence; after a drift a
better candidate is promoted even though the stream's overall hit rate fell (which is what fooled a gate
that compared numbers measured on different data)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from recmodel.data import Event, Item
from services.common.kafka import ensure_topics
from services.common.registry_client import RegistryClient
from services.registry.gate import PromotionGate
from services.trainer.config import TrainerConfig
from services.trainer.leader import AlwaysLeader
from services.trainer.metrics import TrainerMetrics
from services.trainer.exporter import VersionExporter
from services.trainer.service import TrainerService
from tests.integration.trainer.publishing import end_offsets, publish_events, publish_items, small_model
from tests.pki import tls_for, tls_section
from tests.unit.services.trainer.test_holdout import shuffle_item_vectors
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "recommender"


class ShufflingPublisher(VersionExporter):
    """Exports as usual, then breaks the artifact: item vectors shuffled (what the gate must stop)."""

    def export(self, *args, **kwargs):
        out = super().export(*args, **kwargs)
        shuffle_item_vectors(out, seed=int(out.name) % 1000)
        return out


def _config(kafka_config, registry, tmp_path, export_interval_s: float = 2, holdout_fraction: float = 0.2,
            **gate) -> TrainerConfig:
    return TrainerConfig.model_validate({
        "kafka": kafka_config.model_dump(),
        "tls": tls_section("trainer"),
        "metrics": {"enabled": False},
        "trainer": {"registry_target": registry.target, "checkpoint_dir": str(tmp_path / "ckpt"), "device": "cpu",
                    "export_interval_s": export_interval_s, "checkpoint_interval_s": 1, "poll_max_records": 500,
                    # The drift test compares running hit rates: every batch scored, not a loaded machine's budget.
                    "eval_time_share": 1.0,
                    "model": {**small_model(), "holdout_fraction": holdout_fraction}, "gate": gate},
    })


class RunningTrainer:
    def __init__(self, config: TrainerConfig, publisher_class=None) -> None:
        self.service = TrainerService(config, TrainerMetrics(CollectorRegistry()), AlwaysLeader())
        if publisher_class is not None:
            old = self.service.exporter
            self.service.exporter = publisher_class(
                old.client, model_name=old.model_name, trainer_id=old.trainer_id, auto_promote=old.auto_promote,
                exports_dir=old.exports_dir, keep_exports=old.keep_exports)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.service.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> "RunningTrainer":
        self.thread.start()
        wait_for(self.service.ready, 120, "the trainer to restore and assign partitions")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()


def _trained_to(client, events_topic: str, ends: dict[str, int]):
    """The version whose training offsets are exactly ``ends`` (None until it is registered)."""
    for v in client.list_versions(MODEL):
        offsets = json.loads(v.manifest_json)["training_offsets"].get(events_topic, {})
        if {str(p): int(o) for p, o in offsets.items()} == ends:
            return v
    return None


def _wait_trained_to(client, kafka_config, what: str):
    ends = end_offsets(kafka_config)
    topic = kafka_config.topics.name("events")
    return wait_for(lambda: _trained_to(client, topic, ends), 400, f"a version trained on {what}", interval_s=0.5)


def _start(kafka_config, registry):
    ensure_topics(kafka_config, [kafka_config.topics.name("events"), kafka_config.topics.name("items")])
    # Decide on evidence only: staleness must not be what promotes or holds anything here.
    registry.registry.gate = PromotionGate("hr@10", tolerance=0.01, min_events=50, stale_after_s=3600)
    return RegistryClient(registry.target, tls=tls_for("operator"))


N_ITEMS = 200


def _ring_walks(step: int, n_events: int, start_ms: int, seed: int, prefix: str) -> list[Event]:
    """Users walk a ring of items: after item i they mostly take item i + ``step``.

    A habit a sequential model learns well. Changing ``step`` is an abrupt drift: what production learnt
    (what follows what) is wrong afterwards, and the stream's hit rate falls until the model has relearnt.
    """
    rng = np.random.default_rng(seed)
    position = {f"u{u}": int(rng.integers(N_ITEMS)) for u in range(100)}
    users = sorted(position)
    out = []
    for n in range(n_events):
        user = users[int(rng.integers(len(users)))]
        nxt = (position[user] + step) % N_ITEMS if rng.random() < 0.9 else int(rng.integers(N_ITEMS))
        position[user] = nxt
        out.append(Event(f"{prefix}-{n}", user, f"i{nxt}", "click", 1.0, start_ms + 1000 * n))
    return out


def _ring_items() -> list[Item]:
    return [Item(f"i{k}", f"item {k}", f"item number {k}") for k in range(N_ITEMS)]


def test_a_broken_candidate_is_rejected_every_time_with_paired_evidence(kafka_config, registry, tmp_path):
    client = _start(kafka_config, registry)
    publish_items(kafka_config, _ring_items())
    events = _ring_walks(step=1, n_events=11_000, start_ms=1_700_000_000_000, seed=3, prefix="r")
    publish_events(kafka_config, events[:8000])
    with RunningTrainer(_config(kafka_config, registry, tmp_path, holdout_fraction=0.3)):
        _wait_trained_to(client, kafka_config, "the first 8000 events")
    production = client.get_alias(MODEL, "production")
    last_good = max(v.version for v in client.list_versions(MODEL))

    # The same trainer, restarted from its checkpoint, now exports broken artifacts. Production is not in
    # its cache any more: it downloads it from the registry to compare with. Its holdout buffer starts
    # empty: the first export comes once it has read 1000 events, so there is evidence to judge on.
    publish_events(kafka_config, events[8000:9000])
    with RunningTrainer(_config(kafka_config, registry, tmp_path, export_interval_s=5, holdout_fraction=0.3),
                        ShufflingPublisher):
        _wait_trained_to(client, kafka_config, "the events up to 9000")
        for lo in (9000, 10_000):
            publish_events(kafka_config, events[lo:lo + 1000])
            _wait_trained_to(client, kafka_config, f"the events up to {lo + 1000}")
            assert client.get_alias(MODEL, "production").version == production.version
    broken = [v for v in client.list_versions(MODEL) if v.version > last_good]
    assert len(broken) >= 3
    for v in broken:
        m = v.metrics
        assert v.gate_decision == "rejected", (v.version, v.gate_reason)
        assert m["gate.production_version"] == production.version and m["gate.n"] >= 30
        assert m["gate.diff_upper"] < -0.01 < m["gate.production_hr@10"] - m["gate.candidate_hr@10"]
        assert "worse beyond noise" in v.gate_reason and f"production v{production.version}" in v.gate_reason
    client.close()


def test_after_a_drift_a_better_candidate_is_promoted_although_the_overall_hit_rate_fell(
        kafka_config, registry, tmp_path):
    client = _start(kafka_config, registry)
    publish_items(kafka_config, _ring_items())
    before_drift = _ring_walks(step=1, n_events=8000, start_ms=1_700_000_000_000, seed=1, prefix="a")
    after_drift = _ring_walks(step=7, n_events=4000, start_ms=before_drift[-1].timestamp_ms + 1000, seed=2,
                              prefix="b")
    publish_events(kafka_config, before_drift)
    # A short holdout buffer: the comparison is about current traffic. Exports every 10 s: the first
    # version after the drift has learnt some of it, while production has not.
    with RunningTrainer(_config(kafka_config, registry, tmp_path, export_interval_s=10, holdout_events=300)):
        before = _wait_trained_to(client, kafka_config, "the stream before the drift")
        publish_events(kafka_config, after_drift)
        last = _wait_trained_to(client, kafka_config, "the drifted stream")
    versions = {v.version: v for v in client.list_versions(MODEL)}
    table = "\n".join(f"v{v.version} hr@10={v.metrics['hr@10']:.4f} {v.gate_decision}: {v.gate_reason}"
                      for v in versions.values())
    after = [v for n, v in versions.items() if n > before.version]
    assert after and all(v.gate_decision != "rejected" for v in after), table
    assert client.get_alias(MODEL, "production").version == last.version

    # The trainer's running hit rate fell below what production scored when it was registered, yet the
    # paired comparison on the same holdout events showed the candidate better, and it was promoted.
    better_but_lower = [
        v for v in after
        if v.gate_decision == "promoted" and v.metrics["gate.diff_lower"] > 0
        and v.metrics["hr@10"] < versions[int(v.metrics["gate.production_version"])].metrics["hr@10"]
    ]
    assert better_but_lower, table
    client.close()
