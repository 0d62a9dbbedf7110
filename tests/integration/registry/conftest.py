"""Fixtures for registry integration tests: a throwaway PostgreSQL cluster, a registry factory, a topic reader."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from services.common.net import free_port

PG_BIN = Path(os.environ.get("STREAMREC_PG_BIN", "/usr/lib/postgresql/15/bin"))


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster of its own on a free port, started with initdb + pg_ctl; yields its base URL."""
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not (initdb.exists() and pg_ctl.exists()):
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN} (install Debian's postgresql or set STREAMREC_PG_BIN)")
    base = Path(tempfile.mkdtemp(prefix="streamrec-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(base, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()

    def run(*cmd):
        proc = subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
            raise RuntimeError(f"{cmd[0]} failed: {proc.stdout}{proc.stderr}{log[-2000:]}")

    run(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    run(pg_ctl, "-D", data, "-l", base / "server.log", "-w", "-t", "60", "-o",
        f"-p {port} -h 127.0.0.1 -k {base} -c fsync=off -c max_connections=200", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(pg_ctl), "-D", str(data), "-m", "fast", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """The same tests on SQLite (the default) and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    base = request.getfixturevalue("postgres_server")
    import psycopg

    name = f"registry_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


@pytest.fixture
def registry_factory(tmp_path, database_url, kafka_config):
    """Builds started RegistryServices on one database and artifact root (so a 'restart' is a new one)."""
    from services.registry.config import RegistryConfig
    from services.registry.service import RegistryService
    from tests.pki import tls_section

    started: list[RegistryService] = []

    def make(kafka=None, **registry_overrides) -> RegistryService:
        config = RegistryConfig.model_validate({
            "kafka": (kafka or kafka_config).model_dump(),
            "tls": tls_section("registry"),
            "metrics": {"host": "127.0.0.1", "port": 0},
            "grpc": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
            "registry": {"database_url": database_url, "artifact_root": str(tmp_path / "artifacts"),
                         "publish_retry_s": 0.2, "publish_timeout_s": 5, **registry_overrides},
        })
        service = RegistryService(config).start()
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop(0)


class TopicReader:
    """Reads a topic from the beginning and waits (with a deadline) for events to show up."""

    def __init__(self, kafka, topic: str) -> None:
        from kafka import TopicPartition

        from services.common.kafka import make_consumer, partitions_for

        self.consumer = make_consumer(kafka, None, None)
        probe = make_consumer(kafka, None, None)
        try:
            parts = partitions_for(probe, topic)
        finally:
            probe.close()
        self.consumer.assign([TopicPartition(topic, p.partition) for p in parts])
        self.consumer.seek_to_beginning()
        self.events = []

    def wait_for(self, predicate, timeout_s: float = 60.0):
        from streamrec_proto.v1 import registry_pb2

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in self.consumer.poll(200).values():
                for r in records:
                    self.events.append((r.key.decode(), registry_pb2.ModelVersionEvent.FromString(r.value)))
            if predicate(self.events):
                return self.events
        raise AssertionError(f"events never matched; got {[(k, e.action, e.version) for k, e in self.events]}")

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def read_topic():
    readers: list[TopicReader] = []

    def make(kafka, topic: str) -> TopicReader:
        # The publisher creates the topic on first use; wait for it like a consumer would.
        from services.common.kafka import ensure_topics

        ensure_topics(kafka, [topic])
        reader = TopicReader(kafka, topic)
        readers.append(reader)
        return reader

    yield make
    for r in readers:
        r.close()
