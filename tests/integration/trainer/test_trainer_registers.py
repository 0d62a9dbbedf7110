"""Events in -> a registered version whose manifest offsets are what was consumed and whose model
recommends what the stream made popular. Real broker, real registry server (in-process), real
trainer loop (in-process thread), real ONNX Runtime through recmodel.serving.ArtifactModel."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from recmodel.data import Event, SyntheticStream
from services.common.kafka import ensure_topics
from tests.pki import registry_client, tls_section
from services.trainer.config import TrainerConfig
from services.trainer.leader import AlwaysLeader
from services.trainer.metrics import TrainerMetrics
from services.trainer.service import TrainerService
from tests.integration.trainer.publishing import (
    end_offsets,
    publish_events,
    publish_items,
    small_model,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


MODEL = "recommender"


def _stream_with_hot_items(n_hot: int = 5):
    """The synthetic stream, then a burst in which many users take the same few items."""
    stream = SyntheticStream(seed=7, n_users=120, n_items=200, n_events=4000)
    events = list(stream.events())
    items = stream.items()
    rng = np.random.default_rng(0)
    hot = [it.item_id for it in items[:: len(items) // n_hot][:n_hot]]
    users = sorted({e.user_id for e in events})
    t = events[-1].timestamp_ms
    for n in range(1500):
        t += 1000
        events.append(Event(f"hot-{n}", str(rng.choice(users)), str(rng.choice(hot)), "click", 1.0, t))
    return stream, events, hot


def _trainer_config(kafka_config, registry, tmp_path, **trainer) -> TrainerConfig:
    """The in-process trainer of these tests: the small model on the CPU, no metrics server."""
    return TrainerConfig.model_validate({
        "kafka": kafka_config.model_dump(),
        "tls": tls_section("trainer"),
        "metrics": {"enabled": False},
        "trainer": {"registry_target": registry.target, "checkpoint_dir": str(tmp_path / "ckpt"), "device": "cpu",
                    "model": small_model(), **trainer},
    })


@contextlib.contextmanager
def _running(service: TrainerService, before_stop=None):
    """The trainer loop on a thread of its own while the block runs; then ``before_stop()`` (if given), a stop,
    and the loop must have ended within a minute."""
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        if before_stop is not None:
            before_stop()
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()


@contextlib.contextmanager
def _drained_backlog(kafka_config, registry, tmp_path, seed: int, **trainer):
    """A trainer started on a synthetic stream (6,000 events) already on `events`: the block runs once it has
    trained all of it, with ``(service, metrics, events)``."""
    ensure_topics(kafka_config, [kafka_config.topics.name("events"), kafka_config.topics.name("items")])
    stream = SyntheticStream(seed=seed, n_users=100, n_items=200, n_events=6000)
    events = list(stream.events())
    publish_items(kafka_config, stream.items())
    publish_events(kafka_config, events)
    metrics = TrainerMetrics(CollectorRegistry())
    service = TrainerService(_trainer_config(kafka_config, registry, tmp_path, idle_replay_epochs=0, **trainer),
                             metrics, AlwaysLeader())
    with _running(service):
        wait_for(service.ready, 60, "the trainer to restore and assign partitions")
        wait_for(lambda: service.backend.trainer.events_trained == len(events), 300, "the backlog to be trained",
                 interval_s=0.1)
        yield service, metrics, events


def _transition_totals(trainer, events) -> dict[str, float]:
    """Each item's total of transition counts out of it, as ``trainer``'s table counts ``events`` in one go."""
    from recmodel.transitions import TransitionTable

    t = trainer.transitions
    table = TransitionTable(max_next=t.max_next, window=t.window, decay=t.decay, span=t.span,
                            span_decay=t.span_decay, backward=t.backward, top=t.top)
    by_user: dict[str, list] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append((e.item_id, trainer.is_target(e.user_id, (e.item_id, e.type,
                                                                                            e.timestamp_ms))))
    for steps in by_user.values():
        table.observe_sequence(None, steps)
    return table.totals()


def _untrained_prequential(config, stream, events) -> dict:
    """The trainer's prequential metrics over ``events`` from a model built like its own that never trains."""
    from recmodel.train import IncrementalTrainer
    from recmodel.evaluate.prequential import PrequentialEvaluator
    from services.trainer.service import make_text_encoder

    cfg = config.trainer
    trainer = IncrementalTrainer(**cfg.model.trainer_kwargs(), text_encoder=make_text_encoder(cfg.model), device="cpu")
    trainer.upsert_items(stream.items())
    monitor = PrequentialEvaluator(window=cfg.eval_window, ks=cfg.eval_k, max_history=max(50, trainer.max_len))
    for lo in range(0, len(events), cfg.poll_max_records):
        monitor.observe_and_test(trainer, events[lo:lo + cfg.poll_max_records])
    return monitor.metrics()


def test_events_in_version_registered_with_consumed_offsets(kafka_config, registry, tmp_path):
    ensure_topics(kafka_config, [kafka_config.topics.name("events"), kafka_config.topics.name("items")])
    stream, events, hot = _stream_with_hot_items()
    publish_items(kafka_config, stream.items())
    publish_events(kafka_config, events)
    ends = end_offsets(kafka_config)
    assert sum(ends.values()) == len(events)

    # Every batch scored (no time budget for evaluation), as the untrained comparison below scores it: a budget
    # left 67-94 predictions on an idle machine and fewer under load, where one run fell below the bar.
    config = _trainer_config(kafka_config, registry, tmp_path, export_interval_s=2, checkpoint_interval_s=1,
                             poll_max_records=500, eval_time_share=1.0)
    metrics = TrainerMetrics(CollectorRegistry())
    service = TrainerService(config, metrics, AlwaysLeader())
    client = registry_client(registry.target)
    events_topic = kafka_config.topics.name("events")
    with _running(service):
        wait_for(service.ready, 60, "the trainer to restore and assign partitions")

        def caught_up():
            for v in client.list_versions(MODEL):
                offsets = json.loads(v.manifest_json)["training_offsets"].get(events_topic, {})
                if {str(p): int(o) for p, o in offsets.items()} == ends:
                    return v
            return None

        version = wait_for(caught_up, 240, "a version trained up to the end offsets", interval_s=0.5)

    manifest = json.loads(version.manifest_json)
    assert manifest["model_name"] == MODEL
    assert {(o.topic, str(o.partition), o.offset) for o in version.training_offsets} == {
        (events_topic, p, o) for p, o in ends.items()}
    assert version.metrics["events_trained"] == len(events)
    # The prequential HR@10 sees learning: the same stream scored by the same model untrained is far worse.
    untrained = _untrained_prequential(config, stream, events)
    assert version.metrics["prequential_predictions"] >= 200, version.metrics
    assert version.metrics["hr@10"] > max(2 * untrained["hr@10"], untrained["hr@10"] + 0.1), untrained
    assert metrics.versions_registered._value.get() >= 1
    assert metrics.registered_version._value.get() >= version.version
    stages = {s.labels["stage"]: s.value for s in metrics.export_stage_duration.collect()[0].samples
              if s.name.endswith("_count")}
    assert set(stages) == {"evaluate", "write", "judge", "register"}
    assert stages["register"] >= 1 and stages["evaluate"] >= stages["register"]

    # Serve the registered artifact the way inference does and look at what it recommends.
    from recmodel.serving import ArtifactModel

    art_dir = tmp_path / "download"
    assert client.download(MODEL, version.version, art_dir).model_name == MODEL
    model = ArtifactModel.load(art_dir)
    histories = model.histories
    users = sorted(histories)[:60]
    now = events[-1].timestamp_ms + 1000
    user_vecs = model.encode([histories[u] for u in users], [now] * len(users))
    scores = user_vecs @ model.item_vectors.T
    index = {iid: j for j, iid in enumerate(model.item_ids)}
    hot_idx = [index[h] for h in hot]
    percentiles = []
    for row, u in enumerate(users):
        seen = {entry[0] for entry in histories[u]}
        unseen = [j for iid, j in index.items() if iid not in seen]
        order = np.argsort(-scores[row, unseen])
        rank_of = {unseen[j]: r for r, j in enumerate(order)}
        for h in hot_idx:
            if h in rank_of:
                percentiles.append(rank_of[h] / len(unseen))
    # The burst made 5 of 200 items popular: they rank near the top for users who have not taken them yet
    # (a model that ignored the stream would put them at the 50th percentile on average).
    assert percentiles and float(np.mean(percentiles)) < 0.2, np.mean(percentiles)
    client.close()


def test_a_trainer_far_behind_trains_larger_micro_batches_until_it_has_caught_up(kafka_config, registry, tmp_path):
    """Behind the end of `events` by more than catch_up_lag, a step takes catch_up_batch_size events (one
    window per user), so a backlog costs fewer steps; caught up, a step takes one poll's events (at least
    batch_size, see test_step_events_follow_the_poll_between_batch_size_and_the_catch_up_size). A backlog with
    no stream arriving behind it (a restart, a backfill) trains every user: catch_up_max_users bounds steps
    only while the stream outpaces the trainer."""
    batch_size = small_model()["batch_size"]
    with _drained_backlog(kafka_config, registry, tmp_path, 3, export_interval_s=3600, poll_max_records=2000,
                          catch_up_lag=1000, catch_up_batch_size=2000,
                          catch_up_max_users=30) as (service, metrics, events):
        trainer = service.backend.trainer
        backlog_steps = trainer.steps
        # One step per 256 events would be at least 24; polls of up to 2,000 events, one step each, take far fewer.
        assert backlog_steps < len(events) / batch_size / 2, backlog_steps
        assert metrics.users_shed._value.get() == trainer.users_shed == 0
        assert sum(len(h) for h in trainer._histories.values()) == len(events)  # every event is in a history
        assert trainer.transitions.totals() == pytest.approx(_transition_totals(trainer, events))
        wait_for(lambda: metrics.catching_up._value.get() == 0, 60, "the trainer to see that it caught up")
        assert metrics.catch_up_users._value.get() == 0

        more = [Event(f"late-{n}", e.user_id, e.item_id, e.type, e.value, e.timestamp_ms + 10**7)
                for n, e in enumerate(events[:600])]
        publish_events(kafka_config, more)
        wait_for(lambda: trainer.events_trained == len(events) + len(more), 120, "the new events to be trained",
                 interval_s=0.2)
        # Caught up, every user of the 600 new events is trained again (no bound), one step per poll.
        assert trainer.steps > backlog_steps and metrics.users_shed._value.get() == trainer.users_shed == 0
        assert metrics.catching_up._value.get() == 0
        assert metrics.users_shed._value.get() == 0


def test_a_saturated_trainer_stretches_the_pause_between_exports_until_it_keeps_up(kafka_config, registry, tmp_path):
    """Every poll full (a backlog), publishing takes at most catch_up_publish_share of the training thread, so
    few versions are judged while the backlog drains; once a poll takes all there is, exports come every
    export_interval_s again."""
    with _drained_backlog(kafka_config, registry, tmp_path, 5, export_interval_s=0.3, poll_max_records=100,
                          catch_up_lag=10**9, catch_up_publish_share=0.01) as (service, metrics, _):
        during = metrics.versions_registered._value.get()
        # The pause after the first export is 99 times its publish time: longer than the whole drain (with a
        # share of 1, a version every 0.3 s, 10 of them here).
        assert during <= 2, during
        ends = {int(p): o for p, o in end_offsets(kafka_config).items()}
        wait_for(lambda: service.registration is not None and service.registration.events_offsets == ends, 120,
                 "a version of the whole stream once the trainer keeps up", interval_s=0.2)


def test_every_version_is_registered_after_a_checkpoint_that_covers_it(kafka_config, registry, tmp_path):
    """An export's checkpoint is durable before the registry hears of the version: a new leader never restores
    a state behind a registered version."""
    from recmodel.artifact import read_manifest
    from recmodel.checkpoint import read_checkpoint
    from services.trainer.checkpoint_store import StreamPosition

    ensure_topics(kafka_config, [kafka_config.topics.name("events"), kafka_config.topics.name("items")])
    stream = SyntheticStream(seed=3, n_users=80, n_items=120, n_events=3000)
    publish_items(kafka_config, stream.items())
    publish_events(kafka_config, list(stream.events()))
    ends = end_offsets(kafka_config)
    # Checkpoints only come with exports here. The backlog is trained at the usual pace, steps of batch_size (no
    # catching up, which would stretch the pause between exports, and no larger steps for larger polls), so
    # several versions are registered on the way.
    config = _trainer_config(kafka_config, registry, tmp_path, export_interval_s=0.5, checkpoint_interval_s=3600,
                             poll_max_records=300, catch_up_lag=10**9, catch_up_batch_size=0)
    service = TrainerService(config, TrainerMetrics(CollectorRegistry()), AlwaysLeader())
    events_topic = kafka_config.topics.name("events")
    registered: list[tuple[dict, dict]] = []  # (the version's offsets, the checkpoint's) at each registration
    register = service.exporter.register

    def register_after_checking(artifact_dir, parent_version):
        offsets = {int(p): o for p, o in read_manifest(artifact_dir).training_offsets[events_topic].items()}
        _, extra = read_checkpoint(service.store.path)
        registered.append((offsets, StreamPosition.from_extra(extra).events_offsets))
        return register(artifact_dir, parent_version=parent_version)

    service.exporter.register = register_after_checking
    with _running(service):
        wait_for(lambda: registered and {str(p): o for p, o in registered[-1][0].items()} == ends, 240,
                 "a version trained up to the end offsets", interval_s=0.5)
    assert len(registered) >= 2
    for version, checkpoint in registered:
        assert all(checkpoint.get(p, 0) >= o for p, o in version.items()), (version, checkpoint)


@pytest.mark.parametrize("background", [True, False])
def test_training_goes_on_while_a_version_is_judged_and_registered(kafka_config, registry, tmp_path, background):
    """With ``publish_mode: background`` (the default on a GPU) a slow registration does not stop training:
    events published while the first version waits on the registry are trained meanwhile, no second
    publication starts, and the registration then records the state the version was exported from.
    ``inline`` (the default on the CPU) trains nothing meanwhile."""
    from recmodel.artifact import read_manifest

    ensure_topics(kafka_config, [kafka_config.topics.name("events"), kafka_config.topics.name("items")])
    stream = SyntheticStream(seed=5, n_users=60, n_items=100, n_events=2400)
    events = list(stream.events())
    publish_items(kafka_config, stream.items())
    publish_events(kafka_config, events[:1200])
    config = _trainer_config(kafka_config, registry, tmp_path, export_interval_s=0.5, poll_max_records=300,
                             idle_replay_epochs=0, publish_mode="background" if background else "inline")
    service = TrainerService(config, TrainerMetrics(CollectorRegistry()), AlwaysLeader())
    register = service.exporter.register
    release = threading.Event()
    calls: list[int] = []  # events_trained in the manifest of each version handed to the registry

    def slow_register(artifact_dir, parent_version):
        calls.append(int(read_manifest(artifact_dir).metrics["events_trained"]))
        release.wait(120)
        return register(artifact_dir, parent_version=parent_version)

    service.exporter.register = slow_register
    with _running(service, before_stop=release.set):
        wait_for(lambda: calls, 240, "the first version to reach the registry", interval_s=0.2)
        exported = calls[0]
        publish_events(kafka_config, events[1200:])
        trainer = service.backend.trainer
        if background:
            wait_for(lambda: trainer.events_trained == len(events), 240,
                     "the events published meanwhile to be trained", interval_s=0.2)
            assert calls == [exported]  # one publication at a time
            assert service.registration is None  # not registered yet: nothing is recorded before the registry answers
        else:
            time.sleep(3)  # the training thread itself is in the registry call: nothing can be trained meanwhile
            assert trainer.events_trained == exported
        release.set()
        wait_for(lambda: service.registration is not None, 240, "the first registration", interval_s=0.2)
        first = service.registration
        assert first.events_trained == exported  # the exported state, not what was trained since
        wait_for(lambda: service.registration.events_trained == len(events), 240,
                 "a version of everything published", interval_s=0.2)
        assert service.registration.version > first.version


def test_publish_mode_auto_publishes_inline_on_the_cpu_and_in_the_background_on_a_gpu(kafka_config, registry, tmp_path):
    import torch

    def service(device="cpu", **trainer):
        # The service reads only the device of its backend when it is built; no GPU is touched here.
        backend = SimpleNamespace(device=torch.device(device)) if device != "cpu" else None
        return TrainerService(_trainer_config(kafka_config, registry, tmp_path, **trainer),
                              TrainerMetrics(CollectorRegistry()), AlwaysLeader(), backend=backend)

    assert not service().publish_in_background  # the gate's scoring would take the cores training needs
    assert service().champion.scoring_threads == 0
    assert service(publish_mode="background").publish_in_background
    assert service(publish_mode="background").champion.scoring_threads == 1
    assert service("cuda").publish_in_background  # training runs on the GPU: the CPU is free for the gate
    assert not service("cuda", publish_mode="inline").publish_in_background
