"""Shared fixtures: one real Kafka broker per test session, fresh topic names per test."""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests start brokers and services (fork + exec) while gRPC calls run on other threads; gRPC's fork
# handlers then abort some children before they exec. Nothing here forks to keep using gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
# OpenMP worker threads (torch, ONNX Runtime) spin while they wait for work; on a busy 2-core machine
# spinning threads starve the one doing the work and a step takes 100x longer. Sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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


@pytest.fixture
def registry(tmp_path, kafka_config):
    """A real registry service (gRPC on a free port, SQLite, artifacts under tmp_path) on the session broker."""
    from services.registry.config import RegistryConfig
    from services.registry.service import RegistryService

    from tests.pki import tls_section

    config = RegistryConfig.model_validate({
        "kafka": kafka_config.model_dump(),
        "tls": tls_section("registry"),
        "metrics": {"enabled": False},
        "grpc": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "registry": {"database_url": f"sqlite:///{tmp_path / 'registry.db'}", "artifact_root": str(tmp_path / "store"),
                     "publish_retry_s": 0.2, "publish_timeout_s": 5},
    })
    service = RegistryService(config).start()
    yield service
    service.stop(0)
