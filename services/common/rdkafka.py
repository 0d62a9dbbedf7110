"""librdkafka clients (confluent-kafka), for the ingester's consume -> produce loop.

The other services use kafka-python (services/common/kafka.py). The ingester moves every record of the
stream twice, and there kafka-python is the wall: on 2 cores its producer alone took two thirds of the
ingester's time (8,200 events/s, against 23,600 with this producer; ``streamrec bench ingest``), and its
network loop, a Python thread, held records back for 100-200 ms at a time while it waited for the
interpreter lock. librdkafka fetches, batches, compresses and sends on its own C threads, without the lock.

Both clients are configured from the same ``kafka`` section (:class:`KafkaConfig`), with the same meaning.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import confluent_kafka

from services.common.config import KafkaConfig

logger = logging.getLogger(__name__)

KafkaException = confluent_kafka.KafkaException
TopicPartition = confluent_kafka.TopicPartition
TIMESTAMP_NOT_AVAILABLE = confluent_kafka.TIMESTAMP_NOT_AVAILABLE


def describe() -> str:
    """The client and library versions, for benchmark output."""
    return f"confluent-kafka {confluent_kafka.version()[0]} (librdkafka {confluent_kafka.libversion()[0]})"


def client_options(config: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings for the connection: the same brokers, security and timeouts as
    :meth:`KafkaConfig.client_options` gives kafka-python."""
    opts: dict[str, Any] = {
        "bootstrap.servers": config.bootstrap_servers,
        "security.protocol": config.security_protocol,
        "client.id": config.client_id,
        "socket.timeout.ms": config.request_timeout_ms,
        "reconnect.backoff.max.ms": 2000,  # as for kafka-python: back at a broker within 2 s of its return
        "logger": logging.getLogger("librdkafka"),
    }
    if config.sasl_mechanism == "OAUTHBEARER":
        raise ValueError("kafka.sasl_mechanism: OAUTHBEARER needs a token provider, which this configuration "
                         "cannot name; use PLAIN or SCRAM-SHA-256/512")
    if config.sasl_mechanism:
        opts.update({"sasl.mechanism": config.sasl_mechanism, "sasl.username": config.sasl_username,
                     "sasl.password": config.sasl_password})
    for key, name in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                      ("ssl_keyfile", "ssl.key.location")):
        if getattr(config, key):
            opts[name] = getattr(config, key)
    return opts


class Producer:
    """An idempotent, acks=all producer (the settings of services.common.kafka.make_producer).

    ``send`` queues a record and returns at once; ``flush`` waits until every queued record is
    acknowledged or has failed for good; ``failures`` then names the records that failed since the last
    ``take_failures`` (delivery reports come back for failures only: nothing is done per success).
    """

    def __init__(self, config: KafkaConfig, **overrides: Any) -> None:
        self._failures: list[str] = []
        opts = {
            **client_options(config),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.size": 256 * 1024,
            "delivery.report.only.error": True,
            "on_delivery": self._delivered,
            **overrides,
        }
        self._producer = confluent_kafka.Producer(opts)

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None, headers=None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers)
                return
            except BufferError:
                # The local queue is full (the brokers are slow or away): serve delivery reports and wait.
                self._producer.poll(0.1)

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait for every queued record (at most ``timeout_s``); -> records still not acknowledged."""
        return self._producer.flush(-1 if timeout_s is None else timeout_s)

    def take_failures(self) -> list[str]:
        failures, self._failures = self._failures, []
        return failures

    def close(self, timeout_s: float = 10.0) -> None:
        left = self.flush(timeout_s)
        if left:
            logger.warning("producer closed with records not acknowledged", extra={"records": left})


def make_consumer(config: KafkaConfig, group_id: str, on_commit: Callable | None = None,
                  **overrides: Any) -> confluent_kafka.Consumer:
    """A group consumer that never commits by itself (the settings of services.common.kafka.make_consumer);
    ``on_commit(err, partitions)`` receives the outcome of asynchronous commits."""
    opts = {
        **client_options(config),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 3000,
        **({"on_commit": on_commit} if on_commit else {}),
        **overrides,
    }
    return confluent_kafka.Consumer(opts)
