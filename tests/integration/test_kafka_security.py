"""Kafka with authentication, TLS and ACLs: a real broker with SASL_SSL (PLAIN, SCRAM) and mutual-TLS listeners.

Both client libraries (kafka-python and librdkafka) and a whole service run over them; credentials,
certificates and rights that the broker refuses give an error that names the setting to fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType
from kafka.errors import TopicAuthorizationFailedError

from services.cli.publish import EventPublisher
from services.common.config import KafkaConfig, TopicsConfig
from services.common.kafka import ensure_topics
from services.common.localkafka import BrokerSecurity, KafkaBrokerError, LocalKafka
from services.common import rdkafka
from services.common.rdkafka import KafkaAccessError, PartitionReader, check_access
from streamrec_proto.v1 import event_pb2
from tests.integration.ingester.helpers import RunningIngester
from tests.pki import local_ca
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

PASSWORDS = {name: f"{name}-{uuid.uuid4().hex}" for name in ("ingester", "intruder", "least")}


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
    """kafka-python (topics, the publisher, the dedup window) and librdkafka (the ingester's consumer and
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


def _grant(broker, principal: str, topics: dict[str, tuple], groups: tuple = ()) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        admin.create_acls([ACL(principal, "*", op, ACLPermissionType.ALLOW,
                               ResourcePattern(ResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL))
                           for topic, ops in topics.items() for op in ops]
                          + [ACL(principal, "*", ACLOperation.READ, ACLPermissionType.ALLOW,
                                 ResourcePattern(ResourceType.GROUP, group, ACLResourcePatternType.LITERAL))
                             for group in groups])
    finally:
        admin.close()


def test_least_privilege_the_ingester_needs_no_more_than_the_acls_the_readme_lists(secure_broker):
    """README's table for topics an operator created: read events.raw and items.raw in its group, write events,
    items and dlq, read events (the duplicate window). Nothing on the cluster, no create, no other group."""
    config = _sasl(secure_broker, user="least", topics=TopicsConfig(prefix=f"lp{uuid.uuid4().hex[:6]}.", create=False))
    name = config.topics.name
    ensure_topics(config.model_copy(update={"bootstrap_servers": secure_broker.bootstrap_servers,
                                            "security_protocol": "PLAINTEXT", "sasl_mechanism": None}),
                  [name(t) for t in ("events_raw", "items_raw", "events", "items", "dlq")])
    group = config.topics.prefix + "ingester"
    _grant(secure_broker, "User:least", {name("events_raw"): (ACLOperation.READ,), name("items_raw"): (ACLOperation.READ,),
                                         name("events"): (ACLOperation.READ, ACLOperation.WRITE),
                                         name("items"): (ACLOperation.WRITE,), name("dlq"): (ACLOperation.WRITE,)},
           groups=(group,))
    running = RunningIngester(config, group_id=group).start()
    try:
        now = int(time.time() * 1000)
        plain = config.model_copy(update={"bootstrap_servers": secure_broker.bootstrap_servers,
                                          "security_protocol": "PLAINTEXT", "sasl_mechanism": None})
        with EventPublisher(plain) as pub:  # an app's rights are not what this test is about
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
