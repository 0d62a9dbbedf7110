"""`bench freshness` model probes: every probe counts, including those whose first version the gate held back."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from bench import freshness
from streamrec_proto.v1 import recommender_pb2, registry_pb2

TOPIC = "streamrec.events"


def _version(n: int, offset: int, gate: str) -> registry_pb2.ModelVersion:
    return registry_pb2.ModelVersion(version=n, gate_decision=gate, training_offsets=[
        registry_pb2.TopicPartitionOffset(topic=TOPIC, partition=0, offset=offset)])


class FakeRegistry:
    def __init__(self, versions):
        self.versions = {v.version: v for v in versions}
        self.visible = 0  # versions registered so far
        self.deltas: dict[tuple[int, int], registry_pb2.ModelDelta] = {}

    def list_versions(self, model):
        return [v for n, v in sorted(self.versions.items()) if n <= self.visible]

    def get_version(self, model, n):
        return self.versions[n]

    def get_delta(self, model, base_version, sequence):
        return self.deltas.get((base_version, sequence), registry_pb2.ModelDelta())


class FakeInference:
    """Serves ``served[i]`` on the i-th call and registers one more version every call (exported half a
    second before the registry's clock, ``clock["t"]`` seconds, and registered then)."""

    def __init__(self, registry, served, clock):
        self.registry, self.served, self.calls, self.clock = registry, served, 0, clock

    def Recommend(self, request, timeout):
        self.registry.visible += 1
        if self.registry.visible in self.registry.versions:
            version = self.registry.versions[self.registry.visible]
            version.created_at_ms, version.registered_at_ms = int(self.clock["t"] * 1000) - 500, int(self.clock["t"] * 1000)
        version = self.served[min(self.calls, len(self.served) - 1)]
        self.calls += 1
        version, delta = version if isinstance(version, tuple) else (version, 0)
        return recommender_pb2.RecommendResponse(model_version=version, model_delta=delta)


def _run(monkeypatch, versions, served, timeout_s=30.0, deltas=()):
    stack = SimpleNamespace(kafka_config=SimpleNamespace(topics=SimpleNamespace(name=lambda key: TOPIC)),
                            options=SimpleNamespace(partitions=1, model_name="m"))
    monkeypatch.setattr(freshness, "make_consumer", lambda *a: SimpleNamespace(end_offsets=lambda p: {},
                                                                               close=lambda: None))
    monkeypatch.setattr(freshness, "_publish_click", lambda *a: "probe-1")
    monkeypatch.setattr(freshness, "_find_offset", lambda *a: (0, 100))  # the probe event is at offset 100
    monkeypatch.setattr(freshness.time, "sleep", lambda s: None)
    clock = {"t": 1000.0}  # one second passes at each perf_counter() reading; time() reads the same clock

    def tick():
        clock["t"] += 1.0
        return clock["t"]

    monkeypatch.setattr(freshness.time, "perf_counter", tick)
    monkeypatch.setattr(freshness.time, "time", lambda: clock["t"])
    registry = FakeRegistry(versions)
    registry.deltas = {(d.base_version, d.sequence): d for d in deltas}
    return freshness._model_probe(FakeInference(registry, served, clock), stack, registry, None, "u", "i", timeout_s)


def test_a_probe_whose_first_version_was_held_counts_as_held_back_and_as_served_later(monkeypatch):
    # v1 was trained before the event; v2 trained on it but was held; v3 (trained on it) is served.
    versions = [_version(1, 50, "promoted"), _version(2, 150, "held"), _version(3, 200, "promoted")]
    probe = _run(monkeypatch, versions, served=[1, 1, 1, 1, 3])
    assert probe.first_version == 2 and probe.gate == "held" and probe.held_back
    # v2 was exported (its manifest's time) just before the probe's second call, and registered at it;
    # v3 was served at its fifth.
    assert 0 < probe.exported_s == probe.registered_s - 0.5 < probe.served_s


def test_a_probe_never_served_is_still_reported(monkeypatch):
    versions = [_version(1, 50, "promoted"), _version(2, 150, "rejected")]
    probe = _run(monkeypatch, versions, served=[1], timeout_s=20.0)
    assert probe.served_s is None and probe.first_version == 2 and probe.held_back
    straight = _run(monkeypatch, [_version(1, 150, "promoted")], served=[1])
    assert not straight.held_back and straight.served_s is not None


def test_a_probe_served_first_by_a_weight_delta_trained_past_the_event_counts_it(monkeypatch):
    # v1 was trained before the event; its delta 4 too; its delta 5 trained past it, served at the third call.
    versions = [_version(1, 50, "promoted"), _version(2, 300, "promoted")]
    deltas = [registry_pb2.ModelDelta(base_version=1, sequence=s, registered_at_ms=1_002_000,
                                      training_offsets=[registry_pb2.TopicPartitionOffset(topic=TOPIC, partition=0,
                                                                                          offset=o)])
              for s, o in ((4, 90), (5, 120))]
    probe = _run(monkeypatch, versions, served=[(1, 4), (1, 4), (1, 5), 2], deltas=deltas)
    assert probe.served_delta == 5 and probe.served_s == 4.0  # the third answer (a second per clock reading)
    assert probe.delta_registered_s == 1.0  # the registry's clock, against the probe's start (1,001 s)
    # A delta the registry no longer keeps is not counted: the probe goes on to the next answer.
    unknown = _run(monkeypatch, versions, served=[(1, 9), 2], deltas=deltas)
    assert unknown.served_delta == 0 and unknown.served_s == 3.0  # the second answer, by v2


def test_summary_counts_every_probe():
    probes = [freshness.ModelProbe(1.0, 2, "promoted", 3.0), freshness.ModelProbe(1.0, 3, "held", 130.0),
              freshness.ModelProbe(None, 0, "", None)]
    assert freshness._summary([p.served_s for p in probes]) == {"p50": 66.5, "max": 130.0, "n": 2}
    assert sum(p.held_back for p in probes) == 1


def test_trainer_times_are_the_mean_of_each_stage_read_from_the_trainers_metrics_endpoint():
    from prometheus_client import CollectorRegistry

    from services.common.metrics import MetricsServer
    from services.trainer.metrics import TrainerMetrics

    registry = CollectorRegistry()
    metrics = TrainerMetrics(registry)
    for seconds in (0.2, 0.4):
        metrics.export_stage_duration.labels(stage="write").observe(seconds)
        metrics.export_stage_duration.labels(stage="register").observe(seconds / 2)
    metrics.checkpoint_duration.observe(1.5)
    metrics.delta_duration.observe(0.25)
    metrics.deltas_shipped.inc(3)
    metrics.events_trained.inc(5_000)
    metrics.users_shed.inc(40)
    server = MetricsServer(registry, host="127.0.0.1", port=0).start()
    try:
        times = freshness._trainer_times(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.stop()
    assert times == {"mean_s": {"write": 0.3, "register": 0.15, "checkpoint": 1.5, "delta_build": 0.25}, "exports": 2,
                     "deltas_shipped": 3, "events_trained": 5_000, "users_shed": 40}


def test_model_probes_wait_for_a_trainer_that_reports_a_small_lag_and_is_not_catching_up():
    from prometheus_client import CollectorRegistry

    from services.common.metrics import MetricsServer
    from services.trainer.metrics import TrainerMetrics

    registry = CollectorRegistry()
    metrics = TrainerMetrics(registry)
    server = MetricsServer(registry, host="127.0.0.1", port=0).start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        assert not freshness._trainer_caught_up(url, rate=1000)  # no lag reported yet: not known to be caught up
        lag = metrics.consumer_lag.labels(topic="events", partition="0")
        lag.set(30_000)
        metrics.catching_up.set(1)
        assert not freshness._trainer_caught_up(url, rate=1000)  # the backlog of the stack's start
        lag.set(3_000)
        metrics.catching_up.set(0)
        assert not freshness._trainer_caught_up(url, rate=1000)  # still more than two seconds of events behind
        metrics.consumer_lag.labels(topic="events", partition="1").set(500)
        lag.set(1_200)
        assert freshness._trainer_caught_up(url, rate=1000)  # 1,700 records over both partitions
    finally:
        server.stop()


def test_inference_load_time_is_the_mean_over_every_replicas_metrics_endpoint():
    from prometheus_client import CollectorRegistry

    from services.common.metrics import MetricsServer
    from services.inference.metrics import InferenceMetrics

    servers = []
    try:
        for loads in ((0.5, 1.5), (2.5,)):
            registry = CollectorRegistry()
            metrics = InferenceMetrics(registry)
            for seconds in loads:
                metrics.model_load_duration.observe(seconds)
            servers.append(MetricsServer(registry, host="127.0.0.1", port=0).start())
        urls = [f"http://127.0.0.1:{s.port}/metrics" for s in servers]
        assert freshness._inference_load_s(urls) == 1.5  # (0.5 + 1.5 + 2.5) / 3 loads
        assert freshness._inference_load_s(urls[:0]) is None
    finally:
        for s in servers:
            s.stop()


def test_the_background_stream_goes_on_with_new_episodes_of_the_same_world_and_never_repeats_a_sequence():
    from recmodel.data import SyntheticStream

    stream = SyntheticStream(seed=11, n_users=20, n_items=30, n_events=200)
    first = list(stream.events())
    n = len(first)
    events = list(itertools.islice(iter(freshness._Episodes(stream)), 2 * n + n // 2))  # two episodes and a half
    assert events[:n] == first
    # The same users and items, other sequences: no user redoes the first episode's events in order.
    later = events[n:]
    assert all(0 <= int(e.user_id[1:]) < 20 for e in later)  # user ids are u<index>
    assert {e.item_id for e in later} <= {i.item_id for i in stream.items()}
    first_seq = {u: [e.item_id for e in first if e.user_id == u] for u in {e.user_id for e in first}}
    second = events[n : 2 * n]
    second_seq = {u: [e.item_id for e in second if e.user_id == u] for u in {e.user_id for e in second}}
    assert not [u for u, seq in second_seq.items() if len(seq) >= 3 and first_seq.get(u) == seq]
    ids = [e.event_id for e in events]
    assert len(set(ids)) == len(ids)  # the ingester drops a repeated id
    # Deterministic: a second run publishes the same events.
    assert [e.event_id for e in itertools.islice(iter(freshness._Episodes(stream)), len(events))] == ids


def test_trainer_state_reads_events_trained_the_lag_over_every_partition_and_catching_up():
    from prometheus_client import CollectorRegistry

    from services.common.metrics import MetricsServer
    from services.trainer.metrics import TrainerMetrics

    registry = CollectorRegistry()
    metrics = TrainerMetrics(registry)
    metrics.events_trained.inc(4_200)
    server0 = MetricsServer(registry, host="127.0.0.1", port=0).start()
    try:  # no lag reported yet: unknown, not zero
        assert freshness._trainer_state(f"http://127.0.0.1:{server0.port}/metrics") == (4_200, None, False)
    finally:
        server0.stop()
    metrics.consumer_lag.labels(topic="events", partition="0").set(700)
    metrics.consumer_lag.labels(topic="events", partition="1").set(300)
    server = MetricsServer(registry, host="127.0.0.1", port=0).start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        assert freshness._trainer_state(url) == (4_200, 1_000, False)
        metrics.catching_up.set(1)
        assert freshness._trainer_state(url) == (4_200, 1_000, True)
    finally:
        server.stop()


def test_gate_decisions_are_counted_by_decision():
    from streamrec_proto.v1 import registry_pb2

    versions = [registry_pb2.ModelVersion(version=n, gate_decision=d)
                for n, d in enumerate(["promoted", "rejected", "promoted", "", "held"], start=1)]
    assert freshness._gate_decisions(versions) == {"held": 1, "none": 1, "promoted": 2, "rejected": 1}
