"""``streamrec inference`` with several server processes on one port: each loads the production model,
calls on separate connections reach every process, and SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import pytest
import yaml

from services.common.grpc import open_channel
from services.common.net import free_port
from services.stack.status import scrape
from streamrec_proto.v1 import recommender_pb2, recommender_pb2_grpc
from tests.integration.trainer.publishing import ROOT
from tests.pki import tls_for, tls_section
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _recommend_calls(metrics_port: int) -> float | None:
    """Recommend calls answered by the worker serving metrics on ``metrics_port`` (None: not listening)."""
    page = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    if not page:
        return None
    return sum(value for labels, value in page.get("streamrec_inference_request_duration_seconds_count", [])
               if labels.get("method") == "Recommend")


def _answer(target: str, user: str) -> int | None:
    """Model version of one Recommend on a connection of its own, or None while nothing serves."""
    with open_channel(target, tls_for("app"), options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        try:
            reply = recommender_pb2_grpc.RecommenderStub(channel).Recommend(
                recommender_pb2.RecommendRequest(user_id=user, k=5), timeout=30)
        except grpc.RpcError:
            return None
    return reply.model_version


def test_two_processes_share_the_port_serve_the_model_and_stop_on_sigterm(tmp_path, kafka_config, registry,
                                                                          registry_client, artifacts):
    grpc_port, metrics_port = free_port(), free_port()
    while grpc_port in (metrics_port, metrics_port + 1):  # worker i serves metrics on metrics_port + i
        metrics_port = free_port()
    config = tmp_path / "inference.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": kafka_config.bootstrap_servers, "topics": {"prefix": kafka_config.topics.prefix}},
        "tls": tls_section("inference"),
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "grpc": {"host": "127.0.0.1", "port": grpc_port, "shutdown_grace_s": 1},
        "inference": {"registry_target": registry.target, "cache_dir": str(tmp_path / "cache"),
                      "warmup_requests": 2, "processes": 2},
    }))
    log = tmp_path / "inference.log"
    proc = subprocess.Popen([sys.executable, "-m", "services.inference", "--config", str(config)], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _recommend_calls(metrics_port) is not None and _recommend_calls(metrics_port + 1) is not None,
                 120, "both workers' metrics endpoints")
        version = registry_client.register("recommender", artifacts["versions"][0], trainer_id="test",
                                           auto_promote=False).version
        registry_client.set_alias("recommender", "production", version, reason="test")
        target = f"127.0.0.1:{grpc_port}"
        wait_for(lambda: _answer(target, "u1") == version, 120, "the model served")
        # The kernel spreads connections over the processes: each must load the model and answer.
        for n in range(40):
            assert _answer(target, f"u{n}") == version, log.read_text()[-3000:]
            if n >= 10 and all(_recommend_calls(p) for p in (metrics_port, metrics_port + 1)):
                break
        assert all(_recommend_calls(p) for p in (metrics_port, metrics_port + 1)), "calls reached both processes"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        wait_for(lambda: not subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).stdout, 30,
                 "every worker to exit with the parent")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(60)
