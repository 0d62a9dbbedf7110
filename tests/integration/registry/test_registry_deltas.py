"""Registry weight deltas end to end on SQLite and PostgreSQL, with the real broker the registry announces on."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, text

from tests.pki import registry_client
from tests.unit.services.registry.builders import make_artifact_dir

pytestmark = pytest.mark.integration

MODEL = "recommender"
V1_OFFSETS = {"t.events": {0: 11, 1: 21}}  # what make_artifact_dir(seed=1) trained to


def register_delta(client, base: int, payload: bytes, offsets=V1_OFFSETS):
    return client.register_delta(MODEL, base, payload, offsets, created_at_ms=1, newest_event_ms=1, trainer_id="t")


def test_concurrent_deltas_get_distinct_sequences_that_survive_a_restart_and_are_never_announced(
        registry_factory, kafka_config, read_topic, tmp_path):
    first = registry_factory(keep_deltas=5)
    with registry_client(first.target) as client:
        client.register(MODEL, make_artifact_dir(tmp_path / "a1", seed=1), trainer_id="t")
        with ThreadPoolExecutor(20) as pool:
            sequences = list(pool.map(lambda i: register_delta(client, 1, f"delta {i}".encode()).sequence, range(20)))
        assert sorted(sequences) == list(range(1, 21))
        newest = client.download_delta(MODEL, 1)
        assert newest.sequence == 20 and newest.payload == f"delta {sequences.index(20)}".encode()
        assert client.get_delta(MODEL, 1, sequence=15).sequence == 0  # only the newest 5 are kept
        assert client.get_delta(MODEL, 1, sequence=16).sequence == 16
    first.stop(0)

    second = registry_factory(keep_deltas=5)
    with registry_client(second.target) as client:
        assert client.get_delta(MODEL, 1).sequence == 20
        assert register_delta(client, 1, b"after restart").sequence == 21
        v2 = client.register(MODEL, make_artifact_dir(tmp_path / "a2", seed=2), trainer_id="t")
        # Deltas are polled, not announced: model-versions holds only the versions' changes.
        events = read_topic(kafka_config, kafka_config.topics.name("model_versions")).wait_for(
            lambda ev: ("registered", v2.version) in [(e.action, e.version) for _, e in ev])
        assert [(e.action, e.version) for _, e in events][:3] == [("registered", 1), ("promoted", 1), ("registered", 2)]


def test_a_database_from_before_deltas_gains_the_delta_counter(registry_factory, database_url, tmp_path):
    first = registry_factory()
    with registry_client(first.target) as client:
        client.register(MODEL, make_artifact_dir(tmp_path / "a1", seed=1), trainer_id="t")
    first.stop(0)
    engine = create_engine(database_url)
    with engine.begin() as conn:  # back to the schema of the release before deltas
        conn.execute(text("DROP TABLE model_deltas"))
        conn.execute(text("ALTER TABLE registered_models DROP COLUMN last_delta"))
    engine.dispose()

    second = registry_factory()
    with registry_client(second.target) as client:
        assert client.get_version(MODEL, 1).version == 1
        assert register_delta(client, 1, b"first delta").sequence == 1
        assert client.download_delta(MODEL, 1).payload == b"first delta"
