"""Fixtures for the ingester's integration tests."""

from __future__ import annotations

import pytest

from services.common.kafka import make_producer
from tests.integration.ingester.helpers import RunningIngester


@pytest.fixture
def run_ingester(kafka_config):
    started: list[RunningIngester] = []

    def start(config=None, **section) -> RunningIngester:
        running = RunningIngester(config or kafka_config, **section).start()
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive() or running.ingester.consumer is not None:
            running.stop()


@pytest.fixture
def raw_producer(kafka_config):
    producer = make_producer(kafka_config)
    yield producer
    producer.close()

