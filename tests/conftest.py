"""Shared fixtures: one real Kafka broker per test session, fresh topic names per test."""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real single-node KRaft broker, started once for the whole session."""
    from services.common.localkafka import LocalKafka

    broker = LocalKafka(data_dir=tmp_path_factory.mktemp("kafka"), heap="768m")
    broker.start()
    yield broker
    broker.cleanup()


@pytest.fixture
def kafka_config(kafka_broker):
    """A KafkaConfig on the session broker with a topic prefix of its own, so tests never share topics."""
    from services.common.config import KafkaConfig, TopicsConfig

    prefix = f"t{uuid.uuid4().hex[:8]}."
    return KafkaConfig(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        topics=TopicsConfig(prefix=prefix),
    )
