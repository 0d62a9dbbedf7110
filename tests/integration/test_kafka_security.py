"""Kafka with authentication, TLS and ACLs: a real broker with SASL_SSL (PLAIN, SCRAM) and mutual-TLS listeners.

Both client libraries (kafka-python and librdkafka) and a whole service run over them; credentials,
certificates and rights that the broker refuses give an error that names the setting to fix. The ingester, the
trainer and inference each run with exactly their row of the README's ACL table.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid

import grpc
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType
from kafka.errors import KafkaError, TopicAuthorizationFailedError

from services.cli.publish import EventPublisher
from services.common.config import KafkaConfig, TopicsConfig
from services.common.grpc import open_channel
from services.common.kafka import CONTENT_TYPE_HEADER, PROTOBUF, ensure_topics, make_producer
from services.common.kafka_acls import TOPIC_RIGHTS, grant, reader_group
from services.common.localkafka import BrokerSecurity, KafkaBrokerError, LocalKafka
from services.common import rdkafka
from services.common.rdkafka import KafkaAccessError, PartitionReader, check_access
from streamrec_proto.v1 import event_pb2, recommender_pb2, recommender_pb2_grpc, registry_pb2
from tests.integration.ingester.helpers import RunningIngester
from tests.integration.trainer.publishing import end_offsets, publish_events, publish_items, small_model
from tests.pki import local_ca, tls_for, tls_section
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

PASSWORDS = {name: f"{name}-{uuid.uuid4().hex}" for name in ("ingester", "intruder", "least", "trainer", "inference")}


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    """A broker whose SASL_SSL and SSL listeners authorize by ACL: ``ingester`` (SASL) and ``CN=ingester``
    (certificate) may use topics and groups under the prefix ``sec.``; ``intruder`` may log in, nothing more."""
    ca = local_ca()
    cert, key = ca.issue("kafka")
    broker = LocalKafka(data_dir=tmp_path_factory.mktemp("secure-kafka"), heap="384m", security=BrokerSecurity(
        ca_file=ca.ca_file, cert_file=cert, key_file=key, users=PASSWORDS, authorize=True))
    broker.start()
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)  # PLAINTEXT: the super user
    try:
        admin.create_acls([
            ACL(principal, "*", ACLOperation.ALL, ACLPermissionType.ALLOW,
                ResourcePattern(kind, "sec.", ACLResourcePatternType.PREFIXED))
            for principal in ("User:ingester", "User:CN=ingester") for kind in (ResourceType.TOPIC, ResourceType.GROUP)
        ])
    finally:
        admin.close()
    yield broker
    broker.cleanup()


def _sasl(broker, user: str = "ingester", mechanism: str = "SCRAM-SHA-512", **over) -> KafkaConfig:
    settings = dict(bootstrap_servers=broker.sasl_ssl_bootstrap_servers, security_protocol="SASL_SSL",
                    sasl_mechanism=mechanism, sasl_username=user, sasl_password=PASSWORDS.get(user, "?"),
                    ssl_cafile=str(local_ca().ca_file), topics=TopicsConfig(prefix=f"sec.{uuid.uuid4().hex[:6]}."))
    return KafkaConfig(**{**settings, **over})


def _mtls(broker, identity: str | None = "ingester", **over) -> KafkaConfig:
    ca, cert, key = local_ca().paths(identity or "ingester")
    settings = dict(bootstrap_servers=broker.ssl_bootstrap_servers, security_protocol="SSL", ssl_cafile=str(ca),
                    ssl_certfile=str(cert) if identity else None, ssl_keyfile=str(key) if identity else None)
    return KafkaConfig(**{**settings, **over})


def test_the_ingester_validates_a_stream_over_sasl_ssl_and_a_certificate_reader_sees_it(secure_broker):
    """kafka-python (topics, the dedup window) and librdkafka (the publisher, the ingester's consumer and
    producer) over SCRAM-SHA-512 and PLAIN; librdkafka again over mutual TLS to read the result."""
    config = _sasl(secure_broker)
    running = RunningIngester(config).start()
    try:
        now = int(time.time() * 1000)
        with EventPublisher(config.model_copy(update={"sasl_mechanism": "PLAIN"})) as pub:
            for i in range(20):
                pub.publish_event({"event_id": f"e{i}", "user_id": f"u{i % 3}", "item_id": f"i{i}", "type": "click",
                                   "timestamp_ms": now + i})
            pub.publish_event({"event_id": "bad", "user_id": "", "item_id": "i0", "type": "click", "timestamp_ms": now})
        running.wait_committed(21, timeout_s=120)
    finally:
        running.stop()
    assert running.metric("streamrec_ingester_records_out_total", {"topic": config.topics.name("events")}) == 20
    assert running.metric("streamrec_ingester_records_out_total", {"topic": config.topics.name("dlq")}) == 1

    reader = PartitionReader(_mtls(secure_broker), config.topics.name("events"))
    try:
        reader.assign()
        seen: list = []

        def read_all() -> bool:
            for records in reader.poll(1000).values():
                seen.extend(records)
                reader.advance({records[-1].partition(): records[-1].offset() + 1})
            return len(seen) >= 20

        wait_for(read_all, 60, "20 events read back over mutual TLS")
    finally:
        reader.close()
    assert sorted(event_pb2.Event.FromString(m.value()).event_id for m in seen) == sorted(f"e{i}" for i in range(20))


def _super_user(broker, config: KafkaConfig) -> KafkaConfig:
    """``config``'s topics over the PLAINTEXT listener, as the super user: creates topics, and writes what an app or
    another service would (their rights are not what a least-privilege test is about)."""
    return config.model_copy(update={"bootstrap_servers": broker.bootstrap_servers, "security_protocol": "PLAINTEXT",
                                     "sasl_mechanism": None})


def _least_privilege(broker, user: str, service: str, group: str | None = None, **over) -> KafkaConfig:
    """``user``'s config (``over`` changes it) on topics of its own that the super user created (``topics.create``
    off), granted exactly what ``service`` needs (services/common/kafka_acls.py, the README's table, as the local
    stack grants it) with ``group`` as its consumer group, nothing else."""
    config = _sasl(broker, user=user, topics=TopicsConfig(prefix=f"lp{uuid.uuid4().hex[:6]}.", create=False), **over)
    admin = _super_user(broker, config)
    ensure_topics(admin, [config.topics.name(key) for key in TOPIC_RIGHTS[service]])
    grant(admin, f"User:{user}", service, config.topics, group)
    return config


def _refusals(caplog) -> list[str]:
    """Logged warnings and errors in which a client reports a refusal (librdkafka's ..._AUTHORIZATION_FAILED,
    kafka-python's ...AuthorizationFailedError), fields included: a service that works with a right missing still
    says so in its logs, which an operator reads as a wrong ACL."""
    return [f"{r.name}: {r.getMessage()} {vars(r).get('error', '')}" for r in caplog.records
            if r.levelno >= logging.WARNING and re.search(r"authori[sz]ation.?failed", str(vars(r)), re.IGNORECASE)]


def test_least_privilege_the_ingester_needs_no_more_than_the_acls_the_readme_lists(secure_broker, caplog):
    """README's table for topics an operator created: read events.raw and items.raw in its group, write events,
    items and dlq, read events (the duplicate window). Nothing on the cluster, no create, no other group."""
    group = f"ingester-{uuid.uuid4().hex[:6]}"
    config = _least_privilege(secure_broker, "least", "ingester", group)
    name = config.topics.name
    running = RunningIngester(config, group_id=group).start()
    try:
        now = int(time.time() * 1000)
        with EventPublisher(_super_user(secure_broker, config)) as pub:
            for i in range(10):
                pub.publish_event({"event_id": f"e{i}", "user_id": "u", "item_id": f"i{i}", "type": "click",
                                   "timestamp_ms": now + i})
            pub.publish_event({"event_id": "e0", "user_id": "u", "item_id": "i0", "type": "click", "timestamp_ms": now})
            pub.publish_event({"event_id": "bad", "user_id": "", "item_id": "i0", "type": "click", "timestamp_ms": now})
        running.wait_committed(12, timeout_s=120)
    finally:
        running.stop()
    assert running.metric("streamrec_ingester_records_out_total", {"topic": name("events")}) == 10
    assert running.metric("streamrec_ingester_records_out_total", {"topic": name("dlq")}) == 1
    assert running.metric("streamrec_ingester_dedup_hits_total") == 1
    assert not _refusals(caplog)


def _group_offsets(admin: KafkaConfig, group: str, topic: str) -> dict[str, int] | None:
    """What the brokers hold for ``group`` on ``topic`` (what `kafka-consumer-groups --describe` shows lag from);
    None while they cannot say (no group has committed on this broker yet: its offsets topic is still being made)."""
    client = KafkaAdminClient(**admin.client_options())
    try:
        found = client.list_group_offsets({group: None}).get(group, {})
    except KafkaError:
        return None
    finally:
        client.close()
    return {str(tp.partition): meta.offset for tp, meta in found.items() if tp.topic == topic}


def test_least_privilege_the_trainer_needs_no_more_than_the_acls_the_readme_lists(secure_broker, tmp_path, caplog):
    """README's row: read events and items, Read on trainer.consumer_group. It trains on the events (with the item
    from the catalog), and the group's offsets reach the brokers, so lag shows in the usual Kafka tooling."""
    from recmodel.data import Event, Item
    from services.trainer.config import TrainerConfig
    from services.trainer.service import TrainerService

    group = f"trainer-{uuid.uuid4().hex[:6]}"
    config = _least_privilege(secure_broker, "trainer", "trainer", group)
    admin, events_topic = _super_user(secure_broker, config), config.topics.name("events")
    publish_items(admin, [Item("film", title="A film", text="a film about Kafka", categories=("drama",))])
    now = int(time.time() * 1000)
    events = [Event(f"e{i}", f"u{i % 4}", "film" if i % 3 == 0 else f"i{i % 7}", "click", 1.0, now + i)
              for i in range(40)]
    publish_events(admin, events)
    ends = end_offsets(admin)
    service = TrainerService.from_config(TrainerConfig.model_validate({
        "kafka": config.model_dump(), "tls": tls_section("trainer"), "metrics": {"enabled": False},
        "trainer": {"consumer_group": group, "registry_target": "127.0.0.1:1", "checkpoint_dir": str(tmp_path / "ckpt"),
                    "device": "cpu", "checkpoint_interval_s": 1, "export_interval_s": 3600, "idle_replay_epochs": 0,
                    "model": small_model()},
    })).start()

    def metric(name: str, labels: dict | None = None) -> float | None:
        return service.metrics.registry.get_sample_value(name, labels or {})

    try:
        wait_for(lambda: metric("streamrec_trainer_events_trained_total") == len(events), 120, "the events trained")
        wait_for(lambda: _group_offsets(admin, group, events_topic) == ends, 60,
                 f"the trained offsets {ends} committed for {group}")
        lag = "streamrec_trainer_consumer_lag_records"
        wait_for(lambda: all(metric(lag, {"topic": events_topic, "partition": p}) == 0 for p in ends), 60,
                 "no lag on every partition")
    finally:
        service.stop()
        service.wait()  # raises what stopped the trainer, if anything did
    assert metric("streamrec_trainer_items_upserted_total") == 1, "the catalog record read from items"
    assert not _refusals(caplog)


def _small_artifact(path) -> list:
    """A real artifact (ONNX user encoder, item table, history snapshot) of a few hundred synthetic events at
    ``path``; -> those events."""
    from recmodel.data import SyntheticStream
    from recmodel.export import export_artifact
    from recmodel.text import HashingTextEncoder
    from recmodel.train import IncrementalTrainer

    stream = SyntheticStream(seed=3, n_users=20, n_items=40, n_events=300)
    events = list(stream.events())
    trainer = IncrementalTrainer(dim=16, max_len=10, capacity=1000, text_encoder=HashingTextEncoder(16),
                                 device="cpu", seed=0, n_random_negatives=32, n_layers=1)
    trainer.upsert_items(stream.items())
    trainer.train_events(events)
    export_artifact(trainer, path, model_name="recommender", training_offsets={}, metrics={})
    return events


def test_least_privilege_inference_needs_no_more_than_the_acls_the_readme_lists(secure_broker, tmp_path, caplog):
    """README's row: read events and model-versions, Describe on the group librdkafka's history reader is given
    (``<kafka.client_id>-reader``, which commits nothing). A model announced on model-versions is loaded and served,
    and a new user's first event makes their Recommend answer personal (without the item they took)."""
    from services.inference.config import InferenceConfig
    from services.inference.service import InferenceService

    client_id = "streamrec-inference"  # the service's own default
    config = _least_privilege(secure_broker, "inference", "inference", reader_group(client_id), client_id=client_id)
    admin = _super_user(secure_broker, config)
    taken = _small_artifact(tmp_path / "artifacts" / "recommender" / "1")[0].item_id
    server = InferenceService(InferenceConfig.model_validate({
        "kafka": config.model_dump(), "tls": tls_section("inference"), "metrics": {"enabled": False},
        "grpc": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        # Artifacts from a directory: the announcement, not a registry, is what this test is about.
        "inference": {"registry_target": "", "artifact_source": str(tmp_path / "artifacts"),
                      "cache_dir": str(tmp_path / "cache"), "warmup_requests": 2},
    })).start()
    channel = open_channel(server.target, tls_for("app"))
    stub = recommender_pb2_grpc.RecommenderStub(channel)

    def recommend(user: str = "newcomer"):
        try:
            return stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=5), timeout=30)
        except grpc.RpcError:
            return None  # no model yet

    producer = make_producer(admin)
    try:
        # What the registry announces when a version becomes production.
        announcement = registry_pb2.ModelVersionEvent(model_name="recommender", action="promoted", version=1,
                                                      aliases={"production": 1}, sequence=1)
        producer.send(config.topics.name("model_versions"), key=b"recommender", value=announcement.SerializeToString(),
                      headers=[(CONTENT_TYPE_HEADER, PROTOBUF.encode())]).get(60)
        before = wait_for(lambda: (r := recommend()) is not None and r.model_version == 1 and r, 120,
                          "version 1 served after its announcement")
        assert before.source == "popularity", "no history yet"
        event = event_pb2.Event(event_id="first", user_id="newcomer", item_id=taken, type="click",
                                timestamp_ms=int(time.time() * 1000))
        producer.send(config.topics.name("events"), key=b"newcomer", value=event.SerializeToString(),
                      headers=[(CONTENT_TYPE_HEADER, PROTOBUF.encode())]).get(60)
        after = wait_for(lambda: (r := recommend()) is not None and r.source == "model" and r, 60,
                         "the new event in the user's history")
    finally:
        producer.close()
        channel.close()
        server.stop(0)
    assert after.model_version == 1 and len(after.items) == 5
    assert taken not in [i.item_id for i in after.items], "an item the user has taken is not recommended again"
    assert not _refusals(caplog)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_a_wrong_password_is_refused_at_once_naming_the_settings(secure_broker, mechanism):
    start = time.monotonic()
    with pytest.raises(KafkaAccessError, match="refused user 'ingester'.*kafka.sasl_password"):
        check_access(_sasl(secure_broker, mechanism=mechanism, sasl_password="not-the-password"), timeout_s=120)
    assert time.monotonic() - start < 60, "a refused login is not waited out like a broker that is away"
    assert check_access(_sasl(secure_broker, mechanism=mechanism), timeout_s=120)


def test_a_broker_certificate_from_an_untrusted_ca_names_the_ca_setting(secure_broker, tmp_path):
    from services.common.tls import LocalCA

    other = LocalCA(tmp_path / "other-ca")
    with pytest.raises(KafkaAccessError, match="not signed by a CA this client trusts.*kafka.ssl_cafile"):
        check_access(_sasl(secure_broker, ssl_cafile=str(other.ca_file)), timeout_s=120)


def test_the_mutual_tls_listener_refuses_a_client_without_a_certificate(secure_broker):
    with pytest.raises(KafkaAccessError, match="refused this client's certificate.*kafka.ssl_certfile"):
        check_access(_mtls(secure_broker, identity=None), timeout_s=120)
    assert check_access(_mtls(secure_broker), timeout_s=120)


def test_a_user_without_rights_cannot_create_or_read_topics(secure_broker):
    config = _sasl(secure_broker, user="intruder")
    assert check_access(config, timeout_s=120), "the login itself is accepted"
    with pytest.raises(TopicAuthorizationFailedError, match=config.topics.name("events_raw")):
        ensure_topics(config, [config.topics.name("events_raw")], timeout_s=60)
    ensure_topics(_sasl(secure_broker), ["sec.shared"], timeout_s=60)  # created by a user with rights
    with pytest.raises(rdkafka.KafkaException, match="TOPIC_AUTHORIZATION_FAILED"):
        PartitionReader(_sasl(secure_broker, user="intruder"), "sec.shared", timeout_s=30).assign()


@pytest.mark.parametrize("futures", [False, True], ids=["reports", "futures"])
def test_a_producer_refused_its_producer_id_fails_its_records_with_the_reason_and_closes(secure_broker, futures):
    """A principal that may read a topic but write nowhere is refused an idempotent producer id, librdkafka's fatal
    error (it is what a service meets when its Write ACLs are missing). Every record fails naming that refusal, the
    producer keeps saying so, and close() (which a service runs on its way out) returns instead of raising."""
    config = _least_privilege(secure_broker, "trainer", "trainer", f"trainer-{uuid.uuid4().hex[:6]}")
    producer = rdkafka.Producer(config, futures=futures)
    deliveries = [producer.send(config.topics.name("events"), value=b"x") for _ in range(3)]
    refused = re.compile(r"cluster.?authori[sz]ation.?failed", re.IGNORECASE)  # the code, or its log line's words
    assert producer.flush(120) == 0
    failures = producer.take_failures()
    assert failures and all(refused.search(f) for f in failures), failures
    assert producer.fatal is not None
    assert refused.search(producer.take_failures()[0]), "a failed producer never reports success"
    producer.close(timeout_s=30)
    if futures:
        for delivery in deliveries:
            with pytest.raises(rdkafka.KafkaException, match=refused):
                delivery.result(0)


def test_a_service_with_a_wrong_password_exits_with_one_line_that_says_why(secure_broker, tmp_path):
    """The ingester process as ``streamrec ingester`` runs it, not a client retrying for ever."""
    config = _sasl(secure_broker, sasl_password="not-the-password")
    path = tmp_path / "ingester.json"
    path.write_text(json.dumps({"kafka": config.model_dump(), "metrics": {"enabled": False}}))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "services.ingester", "--config", str(path)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "ingester cannot use Kafka" in proc.stderr and "kafka.sasl_password" in proc.stderr, proc.stderr[-2000:]
    assert "not-the-password" not in proc.stderr + proc.stdout, "the password never reaches the logs"


@pytest.mark.parametrize("users", [{"a": 'x"; evil'}, {"a b": "pw"}, {"a": ""}])
def test_local_broker_credentials_that_would_break_its_jaas_line_are_refused(users):
    with pytest.raises(KafkaBrokerError, match="use 1-128 of"):
        LocalKafka(security=BrokerSecurity(ca_file="ca", cert_file="c", key_file="k", users=users))
