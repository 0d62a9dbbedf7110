"""The registry end to end on a real gRPC server, a real Kafka broker, SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from services.common.config import KafkaConfig, TopicsConfig
from services.common.localkafka import LocalKafka
from services.common.net import free_port
from services.common.grpc import open_channel
from tests.pki import registry_client, tls_for
from streamrec_proto.v1 import registry_pb2, registry_pb2_grpc
from tests.unit.services.registry.builders import (
    flip_one_byte_of_member,
    make_artifact_dir,
    pack,
    paired_evidence,
)

pytestmark = pytest.mark.integration

MODEL = "recommender"


def topic_of(kafka) -> str:
    return kafka.topics.name("model_versions")


def actions(events, model=MODEL):
    return [(e.action, e.version) for key, e in events if key == model]


def test_register_promote_rollback_each_announced(registry_factory, kafka_config, read_topic, tmp_path):
    service = registry_factory(gate={"metric": "hr@10", "tolerance": 0.01})
    with registry_client(service.target) as client:
        v1 = client.register(MODEL, make_artifact_dir(tmp_path / "a1", hr=0.30, seed=1), trainer_id="t-0")
        assert (v1.version, v1.gate_decision) == (1, "promoted")
        reader = read_topic(kafka_config, topic_of(kafka_config))
        reader.wait_for(lambda ev: ("promoted", 1) in actions(ev))

        v2 = client.register(MODEL, make_artifact_dir(tmp_path / "a2", hr=0.20, seed=2,
                                                      gate=paired_evidence(1, 0.20, 0.30, n=700)),
                             trainer_id="t-0", parent_version=1)
        assert (v2.version, v2.gate_decision, v2.parent_version) == (2, "rejected", 1)
        assert "hr@10 0.2000 vs production v1 0.3000 on the same 700 holdout events" in v2.gate_reason
        assert client.get_alias(MODEL, "production").version == 1
        assert client.set_alias(MODEL, "production", 2, reason="manual override").version == 2
        assert client.rollback(MODEL, reason="bad in canary").version == 1

        events = reader.wait_for(lambda ev: ("rolled_back", 1) in actions(ev))
        assert actions(events) == [("registered", 1), ("promoted", 1), ("registered", 2), ("rejected", 2),
                                   ("promoted", 2), ("rolled_back", 1)]
        mine = [e for key, e in events if key == MODEL]
        sequences = [e.sequence for e in mine]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        rejected = next(e for e in mine if e.action == "rejected")
        assert rejected.reason == v2.gate_reason and rejected.model_version.metrics["gate.n"] == 700
        last = mine[-1]
        assert dict(last.aliases) == {"candidate": 2, "production": 1}
        assert last.reason == "bad in canary" and last.model_version.version == 1

        # The artifact comes back byte-exact and verified; lineage is queryable.
        out = tmp_path / "download"
        assert client.download(MODEL, 1, out).model_name == MODEL
        assert (out / "user_encoder.onnx").read_bytes() == (tmp_path / "a1" / "user_encoder.onnx").read_bytes()
        shown = client.get_version(MODEL, 1)
        assert shown.trainer_id == "t-0" and shown.metrics["hr@10"] == pytest.approx(0.30)
        assert {(o.partition, o.offset) for o in shown.training_offsets} == {(0, 11), (1, 21)}
        assert [v.version for v in client.list_versions(MODEL)] == [1, 2]

    assert service.announcer.wait_idle(60)
    body = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_server.port}/metrics", timeout=30).read().decode()
    assert f'streamrec_registry_versions_registered_total{{model="{MODEL}"}} 2.0' in body
    assert f'streamrec_registry_gate_rejections_total{{model="{MODEL}"}} 1.0' in body
    assert 'streamrec_registry_promotions_total{alias="production",model="recommender"} 3.0' in body
    assert "streamrec_registry_outbox_backlog_records 0.0" in body
    assert f'streamrec_registry_gate_holds_total{{model="{MODEL}"}} 0.0' in body
    assert f'streamrec_registry_production_staleness_seconds{{model="{MODEL}"}}' in body  # v2 is newer than v1
    assert 'streamrec_registry_request_duration_seconds_count{code="OK",method="RegisterVersion"} 2.0' in body
    assert "streamrec_registry_artifact_bytes" in body


def test_tampered_upload_is_refused_with_a_status_naming_the_file(registry_factory, tmp_path):
    service = registry_factory()
    d = make_artifact_dir(tmp_path / "a", seed=1)
    tar, _ = pack(d, tmp_path / "a.tar")
    flip_one_byte_of_member(tar, "user_encoder.onnx")
    data = tar.read_bytes()
    header = registry_pb2.RegisterHeader(model_name=MODEL, manifest_json=(d / "manifest.json").read_text(),
                                         artifact_sha256=hashlib.sha256(data).hexdigest(),
                                         artifact_size_bytes=len(data), trainer_id="t")
    with registry_client(service.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.register_archive(header, tar)
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        assert "user_encoder.onnx" in err.value.details()
        # In transit: the archive digest no longer matches what the client declared.
        header.artifact_sha256 = "0" * 64
        with pytest.raises(grpc.RpcError) as err:
            client.register_archive(header, tar)
        assert err.value.code() == grpc.StatusCode.DATA_LOSS and "sha256" in err.value.details()
        assert client.list_versions(MODEL, include_archived=True) == []
        with pytest.raises(grpc.RpcError) as err:
            client.get_alias(MODEL, "candidate")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_fifty_concurrent_registrations_get_versions_1_to_50_once(registry_factory, kafka_config, read_topic,
                                                                  tmp_path):
    service = registry_factory(keep_last=100)
    dirs = [make_artifact_dir(tmp_path / f"a{i}", hr=0.3, seed=i) for i in range(50)]
    with registry_client(service.target) as client:
        with ThreadPoolExecutor(50) as pool:
            versions = list(pool.map(lambda d: client.register(MODEL, d, trainer_id="t", auto_promote=False).version,
                                     dirs))
        assert sorted(versions) == list(range(1, 51))
        listed = client.list_versions(MODEL)
        assert [v.version for v in listed] == list(range(1, 51))
        assert len({v.artifact_sha256 for v in listed}) == 50
    reader = read_topic(kafka_config, topic_of(kafka_config))
    events = reader.wait_for(lambda ev: len([a for a in actions(ev) if a[0] == "registered"]) >= 50)
    assert sorted(v for a, v in actions(events) if a == "registered") == list(range(1, 51))


def test_promotion_while_kafka_is_down_is_durable_at_once_and_announced_later(registry_factory, read_topic,
                                                                             tmp_path):
    broker = LocalKafka(data_dir=tmp_path / "kafka", port=free_port(), heap="384m")
    broker.start()
    try:
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topics=TopicsConfig(prefix="down."))
        service = registry_factory(kafka=kafka)
        with registry_client(service.target) as client:
            client.register(MODEL, make_artifact_dir(tmp_path / "a1", hr=0.3, seed=1), trainer_id="t")
            client.register(MODEL, make_artifact_dir(tmp_path / "a2", hr=0.1, seed=2), trainer_id="t")
            assert service.announcer.wait_idle(30)
            broker.stop()

            promoted = client.set_alias(MODEL, "production", 2, reason="while kafka is down")
            assert "production" in promoted.aliases
            assert client.get_alias(MODEL, "production").version == 2  # durable and visible at once
            assert service.announcer.backlog() == 1

            broker.start()
            reader = read_topic(kafka, topic_of(kafka))
            events = reader.wait_for(lambda ev: ("promoted", 2) in actions(ev), timeout_s=60)
            assert actions(events)[-1] == ("promoted", 2)
            assert dict(events[-1][1].aliases)["production"] == 2
            assert service.announcer.wait_idle(30)
    finally:
        broker.cleanup()


def test_restart_loses_nothing_and_an_interrupted_upload_leaves_no_version(registry_factory, kafka_config,
                                                                           tmp_path):
    first = registry_factory()
    with registry_client(first.target) as client:
        for seed in (1, 2):
            client.register(MODEL, make_artifact_dir(tmp_path / f"a{seed}", hr=0.3, seed=seed), trainer_id="t")
        production = client.get_alias(MODEL, "production").version  # v1; v2 carries no gate evidence

    # An upload the client abandons half-way through.
    d = make_artifact_dir(tmp_path / "a3", seed=3, extra_bytes=256 * 1024)
    tar, sha = pack(d, tmp_path / "a3.tar")
    data = tar.read_bytes()
    sent_half, release = threading.Event(), threading.Event()

    def requests():
        yield registry_pb2.RegisterVersionRequest(header=registry_pb2.RegisterHeader(
            model_name=MODEL, artifact_sha256=sha, artifact_size_bytes=len(data), trainer_id="t"))
        yield registry_pb2.RegisterVersionRequest(chunk=data[: len(data) // 2])
        sent_half.set()
        release.wait(60)

    with open_channel(first.target, tls_for("trainer")) as channel:
        call = registry_pb2_grpc.ModelRegistryStub(channel).RegisterVersion.future(requests(), timeout=30)
        assert sent_half.wait(60)
        staging = Path(first.config.registry.artifact_root) / ".staging"
        _wait(lambda: any(staging.iterdir()), "the upload to reach the server")
        call.cancel()
        release.set()
    _wait(lambda: not any(staging.iterdir()), "the staging area to be cleaned")
    first.stop(0)

    second = registry_factory()
    with registry_client(second.target) as client:
        assert [v.version for v in client.list_versions(MODEL, include_archived=True)] == [1, 2]
        assert client.get_alias(MODEL, "production").version == production
        client.download(MODEL, 1, tmp_path / "d1")
        assert client.register(MODEL, d, trainer_id="t").version == 3  # no number was used by the abandoned one


def _wait(cond, what: str, timeout_s: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
