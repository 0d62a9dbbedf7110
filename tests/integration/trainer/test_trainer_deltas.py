"""Between full versions the trainer registers weight deltas of its last version: real broker, real registry,
real trainer loop, and the delta applied to the registered artifact with ONNX Runtime."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from recmodel.data import SyntheticStream
from services.common.kafka import ensure_topics
from services.trainer.leader import AlwaysLeader
from services.trainer.metrics import TrainerMetrics
from services.trainer.service import TrainerService
from tests.integration.trainer.publishing import end_offsets, publish_events, publish_items
from tests.integration.trainer.test_trainer_registers import MODEL, _running, _trainer_config
from tests.pki import registry_client
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_new_events_reach_the_registry_as_deltas_of_the_registered_version(kafka_config, registry, tmp_path):
    from recmodel.delta import read_delta
    from recmodel.serving import ArtifactModel

    ensure_topics(kafka_config, [kafka_config.topics.name("events"), kafka_config.topics.name("items")])
    stream = SyntheticStream(seed=9, n_users=100, n_items=200, n_events=4000)
    events = list(stream.events())
    publish_items(kafka_config, stream.items())
    publish_events(kafka_config, events[:3000])
    # One full version once the first 3,000 events are trained, none after that within the test: what
    # comes later reaches the registry as deltas only.
    config = _trainer_config(kafka_config, registry, tmp_path, export_interval_s=3600, export_every_events=3000,
                             delta_interval_s=0.2, idle_replay_epochs=0)
    metrics = TrainerMetrics(CollectorRegistry())
    service = TrainerService(config, metrics, AlwaysLeader())
    client = registry_client(registry.target)
    topic = kafka_config.topics.name("events")
    with _running(service):
        version = wait_for(lambda: next(iter(client.list_versions(MODEL)), None), 300, "the first version").version
        publish_events(kafka_config, events[3000:])
        ends = {int(p): o for p, o in end_offsets(kafka_config).items()}

        def delta_to_the_end():
            found = client.get_delta(MODEL, version)
            offsets = {o.partition: o.offset for o in found.training_offsets if o.topic == topic}
            return found if found.sequence and offsets == ends else None

        latest = wait_for(delta_to_the_end, 300, "a delta trained to the end of the stream", interval_s=0.2)
    assert [v.version for v in client.list_versions(MODEL)] == [version]
    assert latest.base_version == version and latest.trainer_id
    assert metrics.deltas_shipped._value.get() >= 1
    assert sum(s.value for s in metrics.delta_duration.collect()[0].samples if s.name.endswith("_count")) >= 1

    downloaded = client.download_delta(MODEL, version, sequence=latest.sequence)
    art = tmp_path / "v"
    client.download(MODEL, version, art)
    base = ArtifactModel.load(art, providers=["CPUExecutionProvider"])
    delta = read_delta(downloaded.payload, dim=base.dim, n_items=len(base.item_ids))
    patched = base.with_delta(delta, ["CPUExecutionProvider"])
    assert len(delta.rows) > 0 and (patched.item_vectors != base.item_vectors).any()
    client.close()
