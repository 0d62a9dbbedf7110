"""The librdkafka clients take the same `kafka` section as the kafka-python ones, with the same meaning."""

from __future__ import annotations

import pytest

from services.common import rdkafka
from services.common.config import KafkaConfig
from tests.pki import tls_for


def test_tls_and_sasl_settings_map_to_librdkafka_and_the_clients_accept_them():
    tls = tls_for("ingester")
    config = KafkaConfig(bootstrap_servers="broker-0:9093,broker-1:9093", security_protocol="SASL_SSL",
                         sasl_mechanism="SCRAM-SHA-512", sasl_username="ingester", sasl_password="s3cret",
                         ssl_cafile=tls.ca_file, ssl_certfile=tls.cert_file, ssl_keyfile=tls.key_file,
                         client_id="ingester-0", request_timeout_ms=15000)
    opts = rdkafka.client_options(config)
    assert {k: v for k, v in opts.items() if k != "logger"} == {
        "bootstrap.servers": "broker-0:9093,broker-1:9093", "security.protocol": "SASL_SSL",
        "client.id": "ingester-0", "socket.timeout.ms": 15000, "reconnect.backoff.max.ms": 2000,
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "ingester", "sasl.password": "s3cret",
        "ssl.ca.location": tls.ca_file, "ssl.certificate.location": tls.cert_file,
        "ssl.key.location": tls.key_file}
    # librdkafka reads the CA, the certificate and the key when a client is made: a wrong file fails here.
    rdkafka.Producer(config).close(timeout_s=0)
    rdkafka.make_consumer(config, "g").close()


def test_an_unreadable_certificate_is_refused_when_the_client_is_made(tmp_path):
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    config = KafkaConfig(security_protocol="SSL", ssl_cafile=str(bad))
    with pytest.raises(rdkafka.KafkaException):
        rdkafka.Producer(config)


def test_oauthbearer_is_refused_naming_the_setting():
    config = KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER")
    with pytest.raises(ValueError, match="kafka.sasl_mechanism"):
        rdkafka.client_options(config)


def test_a_record_the_brokers_never_acknowledge_is_reported_not_dropped():
    # Nothing listens on this port: the record times out in the client and comes back as a failure.
    producer = rdkafka.Producer(KafkaConfig(bootstrap_servers="127.0.0.1:9"), **{"message.timeout.ms": 500})
    producer.send("events", key=b"u1", value=b"x")
    assert producer.flush(30) == 0
    failures = producer.take_failures()
    assert len(failures) == 1 and "events" in failures[0], failures
    assert producer.take_failures() == []


def test_with_futures_each_record_settles_by_itself_and_a_failure_names_its_error():
    # Nothing listens on this port: the record times out in the client, and nobody calls flush or poll.
    producer = rdkafka.Producer(KafkaConfig(bootstrap_servers="127.0.0.1:9"), futures=True, message_timeout_ms=500)
    delivery = producer.send("events", key=b"u1", value=b"x")
    assert not delivery.cancel(), "a record handed to the producer cannot be called back"
    with pytest.raises(rdkafka.KafkaException) as refused:
        delivery.get(timeout=30)
    assert refused.value.args[0].code() == rdkafka.KafkaError._MSG_TIMED_OUT
    failures = producer.take_failures()
    assert len(failures) == 1 and failures[0].startswith("events[") and "timed out" in failures[0], failures
    producer.close(timeout_s=30)


def test_closing_a_producer_with_futures_fails_what_is_still_unanswered():
    producer = rdkafka.Producer(KafkaConfig(bootstrap_servers="127.0.0.1:9"), futures=True)
    deliveries = [producer.send("events", value=b"x") for _ in range(3)]
    producer.close(timeout_s=0.5)
    codes = {d.exception(timeout=0).args[0].code() for d in deliveries}
    assert codes <= {rdkafka.KafkaError._PURGE_QUEUE, rdkafka.KafkaError._PURGE_INFLIGHT}, codes
    assert len(producer.take_failures()) == 3


def test_producer_settings_by_librdkafka_or_kafka_python_names_and_an_unknown_one_named():
    assert rdkafka.librdkafka_settings({"linger_ms": 2, "batch.size": 10, "error_cb": print}) == {
        "linger.ms": 2, "batch.size": 10, "error_cb": print}
    with pytest.raises(ValueError, match="producer option 'max_block_ms'"):
        rdkafka.Producer(KafkaConfig(bootstrap_servers="127.0.0.1:9"), max_block_ms=1000)


def test_a_blocking_call_is_bounded_and_its_error_or_result_comes_back():
    import threading

    never = threading.Event()
    with pytest.raises(TimeoutError, match="a stuck commit"):
        rdkafka.bounded(never.wait, "a stuck commit", timeout_s=0.2)
    never.set()
    assert rdkafka.bounded(lambda: 42, "a call") == 42
    with pytest.raises(rdkafka.KafkaException):
        rdkafka.bounded(lambda: (_ for _ in ()).throw(rdkafka.KafkaException("refused")), "a call")


def test_a_broker_that_stays_away_is_logged_once_a_minute_not_at_every_attempt(caplog):
    import logging

    assert any(isinstance(f, rdkafka._Repeats) for f in rdkafka._librdkafka_log.filters)
    # A logger of its own with a fresh filter: the librdkafka logger's filter remembers what other tests logged.
    log = logging.getLogger("test-librdkafka-repeats")
    log.addFilter(rdkafka._Repeats())
    with caplog.at_level("INFO", logger=log.name):
        for ms in range(50):
            log.error("FAIL [streamrec#consumer-1]: 127.0.0.1:9: Connect failed (after %dms in state CONNECT)", ms)
        log.error("a different message")
    assert [r.getMessage()[:4] for r in caplog.records] == ["FAIL", "a di"]


def test_brokers_that_do_not_answer_are_waited_for_until_the_timeout_or_a_stop():
    import threading
    import time

    from services.common.net import free_port

    config = KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(rdkafka.KafkaAccessError, match="no broker answers: check kafka.bootstrap_servers"):
        rdkafka.check_access(config, timeout_s=3)
    stop = threading.Event()
    threading.Timer(3, stop.set).start()
    start = time.monotonic()
    assert rdkafka.check_access(config, timeout_s=None, stop=stop) is False
    assert 2.5 < time.monotonic() - start < 60, "waited until the stop, then returned"
