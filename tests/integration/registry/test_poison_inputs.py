"""Hostile or broken input to the registry is refused or parked, and blocks nothing that comes after it."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request

import grpc
import pytest

from streamrec_proto.v1 import registry_pb2
from tests.pki import registry_client
from tests.unit.services.registry.builders import make_artifact_dir

pytestmark = pytest.mark.integration

MODEL = "recommender"


def _actions(events):
    return [(e.action, e.version) for key, e in events if key == MODEL]


def _create_topic(kafka, name: str, **configs) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(**kafka.client_options())
    try:
        admin.create_topics([NewTopic(name, 1, 1, topic_configs={"cleanup.policy": "compact", **configs})])
    finally:
        admin.close()


@pytest.fixture(params=["sqlite"])
def database_url(request, tmp_path):
    return f"sqlite:///{tmp_path / 'registry.db'}"


def test_an_announcement_kafka_refuses_is_parked_and_later_ones_still_go_out(registry_factory, kafka_config,
                                                                            read_topic, tmp_path, capsys):
    from services.cli import models as models_cli
    from tests.pki import local_ca

    topic = kafka_config.topics.name("model_versions")
    # Records on this topic may be at most 2500 bytes: an announcement with a long reason does not fit.
    _create_topic(kafka_config, topic, **{"max.message.bytes": "2500"})
    service = registry_factory()
    with registry_client(service.target) as client:
        client.register(MODEL, make_artifact_dir(tmp_path / "a1", seed=1), trainer_id="t")
        client.register(MODEL, make_artifact_dir(tmp_path / "a2", seed=2), trainer_id="t", auto_promote=False)
        reader = read_topic(kafka_config, topic)
        events = reader.wait_for(lambda ev: ("registered", 2) in _actions(ev))
        assert max(e.ByteSize() for _, e in events) < 2000  # ordinary announcements fit

        client.set_alias(MODEL, "canary", 2, reason="€" * 1000)  # 3000 bytes of reason: Kafka refuses it
        client.set_alias(MODEL, "production", 2, reason="after the big one")
        client.register(MODEL, make_artifact_dir(tmp_path / "a3", seed=3), trainer_id="t", auto_promote=False)

        events = reader.wait_for(lambda ev: ("registered", 3) in _actions(ev), timeout_s=60)
        assert ("promoted", 2) in _actions(events) and ("alias_set", 2) not in _actions(events)
        assert service.announcer.wait_idle(30)
        parked = client.list_parked(MODEL)
        assert [(p.action, p.version) for p in parked] == [("alias_set", 2)]
        assert "Kafka refused it" in parked[0].reason and parked[0].size_bytes > 2500
        assert client.get_alias(MODEL, "canary").version == 2  # the change itself stands

    body = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_server.port}/metrics", timeout=30).read().decode()
    assert "streamrec_registry_outbox_parked_records 1.0" in body
    assert "streamrec_registry_outbox_backlog_records 0.0" in body
    assert models_cli.main(["list", "--registry", service.target, "--tls-dir", str(local_ca().directory)]) == 0
    err = capsys.readouterr().err
    assert "parked announcement" in err and "alias_set v2" in err


def test_an_announcement_over_the_registry_limit_is_parked_without_being_sent(registry_factory, kafka_config,
                                                                             read_topic, tmp_path):
    service = registry_factory(max_announcement_bytes=2048)
    topic = kafka_config.topics.name("model_versions")
    with registry_client(service.target) as client:
        client.register(MODEL, make_artifact_dir(tmp_path / "a1", seed=1), trainer_id="t")
        client.register(MODEL, make_artifact_dir(tmp_path / "a2", seed=2), trainer_id="t", auto_promote=False)
        client.set_alias(MODEL, "production", 2, reason="€" * 900)  # 2700 bytes: over the limit
        client.rollback(MODEL, reason="short")
        reader = read_topic(kafka_config, topic)
        events = reader.wait_for(lambda ev: ("rolled_back", 1) in _actions(ev), timeout_s=60)
        assert ("promoted", 2) not in _actions(events)
        assert [(p.action, p.version) for p in client.list_parked(MODEL)] == [("promoted", 2)]
        assert "over the 2048-byte limit" in client.list_parked(MODEL)[0].reason


def test_an_archive_bomb_is_refused_and_the_next_upload_registers(registry_factory, tmp_path):
    service = registry_factory()
    # 20 MiB of zeros in a few KB of xz, under a header that declares it honestly.
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:xz") as tar:
        member = tarfile.TarInfo("items.npz")
        member.size = 20 * 1024 * 1024
        tar.addfile(member, io.BytesIO(bytes(member.size)))
    data = bomb.getvalue()
    assert len(data) < 16 * 1024
    (tmp_path / "bomb.tar").write_bytes(data)
    header = registry_pb2.RegisterHeader(model_name=MODEL, artifact_sha256=hashlib.sha256(data).hexdigest(),
                                         artifact_size_bytes=len(data), trainer_id="t")
    with registry_client(service.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.register_archive(header, tmp_path / "bomb.tar")
        assert err.value.code() == grpc.StatusCode.DATA_LOSS and "uncompressed tar" in err.value.details()
        staging = tmp_path / "artifacts" / ".staging"
        assert not staging.exists() or not any(staging.iterdir())
        assert client.register(MODEL, make_artifact_dir(tmp_path / "a1", seed=1), trainer_id="t").version == 1
