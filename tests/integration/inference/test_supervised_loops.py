"""A background loop of the inference server that keeps dying turns health NOT_SERVING, and back once it heals."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2

from tests.integration.inference.test_inference_service import health, register
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def test_a_watcher_that_cannot_recover_turns_health_not_serving_until_it_does(artifacts, registry_client,
                                                                               make_inference, monkeypatch):
    server = make_inference()
    supervisor = server.watcher.supervisor
    supervisor.initial_backoff_s, supervisor.max_backoff_s = 0.05, 0.2
    supervisor.max_failures, supervisor.stable_after_s = 3, 2.0
    register(registry_client, artifacts["versions"][0])
    server.wait_ready(60)
    wait_for(lambda: health(server) == SERVING, 60, "SERVING")

    # Injected failure: taking the next version's history snapshot raises, which kills the watcher's loop
    # every time it comes back and tries that version again.
    def broken_merge(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(server.histories, "merge_snapshot", broken_merge)
    v2 = register(registry_client, artifacts["versions"][1])
    wait_for(lambda: health(server) == NOT_SERVING, 60, "NOT_SERVING once the watcher keeps failing")
    restarts = server.metrics.loop_restarts.labels("model-watcher")._value.get()
    assert restarts >= 3
    assert server.metrics.loop_healthy.labels("model-watcher")._value.get() == 0
    assert server.repository.get().version == v2 - 1, "the old version is still loaded"

    monkeypatch.undo()  # the fault goes away: the next restart loads v2 and stays up
    wait_for(lambda: server.repository.get().version == v2, 60, "v2 served after the loop recovered")
    wait_for(lambda: health(server) == SERVING, 30, "SERVING again")
    assert server.metrics.loop_healthy.labels("model-watcher")._value.get() == 1
