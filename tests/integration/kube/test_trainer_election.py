"""Two ``streamrec trainer`` processes elect a leader through a Lease on a real API server: exactly
one leads and trains, the standby never trains, and SIGKILL of the leader hands the lease over once
it expires (never earlier, so two replicas never train at once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from recmodel.data import SyntheticStream
from services.common.kafka import ensure_topics
from services.common.net import free_port
from tests.integration.trainer.publishing import (
    metric_value,
    publish_events,
    publish_items,
    scrape,
    write_config,
)
from tests.waiting import wait_for

# The first test of a session may build the control plane (minutes on 2 cores) in its fixture.
pytestmark = [pytest.mark.timeout(1200), pytest.mark.kube, pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
LEASE = "streamrec-trainer"
# Generous for a loaded 2-core machine: a renewal that takes seconds must not cost the lease.
LEASE_DURATION_S, RENEW_DEADLINE_S, RETRY_PERIOD_S = 10.0, 7.0, 1.0


class Replica:
    def __init__(self, name: str, tmp_path: Path, kafka_config, kubeconfig: Path, namespace: str) -> None:
        self.name = name
        self.port = free_port()
        self.log = tmp_path / f"{name}.log"
        self.config = write_config(
            tmp_path / f"{name}.yaml", kafka_config, checkpoint_dir=tmp_path / f"{name}-ckpt",
            metrics_port=self.port, export_interval_s=3600,
            leader_election={"enabled": True, "kubeconfig": str(kubeconfig), "namespace": namespace,
                             "identity": name, "lease_name": LEASE, "lease_duration_s": LEASE_DURATION_S,
                             "renew_deadline_s": RENEW_DEADLINE_S, "retry_period_s": RETRY_PERIOD_S})
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "services.trainer", "--config", str(self.config)],
                                     cwd=ROOT, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    def metrics(self) -> tuple[float, float] | None:
        """(is_leader, events trained), or None while the metrics server is not up."""
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            text = scrape(self.port)
        except OSError:
            return None
        return (metric_value(text, "streamrec_trainer_is_leader") or 0.0,
                metric_value(text, "streamrec_trainer_events_trained_total") or 0.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(60)


def _lease(coordination, namespace: str):
    from kubernetes.client.exceptions import ApiException

    try:
        return coordination.read_namespaced_lease(LEASE, namespace).spec
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_one_trainer_leads_and_sigkill_hands_the_lease_over(kube_cluster, kube_api, kafka_config, tmp_path):
    from kubernetes import client

    namespace = f"trainers-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": namespace}})
    coordination = client.CoordinationV1Api(kube_api)
    ensure_topics(kafka_config, [kafka_config.topics.name("events"), kafka_config.topics.name("items")])
    stream = SyntheticStream(seed=3, n_users=40, n_items=80, n_events=600)
    publish_items(kafka_config, stream.items())
    publish_events(kafka_config, list(stream.events()))

    replicas = {name: Replica(name, tmp_path, kafka_config, kube_cluster.kubeconfig, namespace)
                for name in ("trainer-a", "trainer-b")}
    try:
        holder = wait_for(lambda: (_lease(coordination, namespace) or client.V1LeaseSpec()).holder_identity,
                          timeout_s=300, what="a trainer to take the lease", interval_s=0.2)
        leader, standby = replicas[holder], replicas[next(n for n in replicas if n != holder)]
        # The leader trains what was published; meanwhile the standby is up, healthy and idle.
        wait_for(lambda: (m := leader.metrics()) and m[1] >= 600, timeout_s=300,
                 what="the leader to train the published events", interval_s=0.5)
        wait_for(standby.metrics, timeout_s=300, what="the standby's metrics server", interval_s=0.5)
        for _ in range(int(3 * RETRY_PERIOD_S / 0.25)):  # several renewal rounds: the holder never moves
            assert _lease(coordination, namespace).holder_identity == leader.name
            assert standby.metrics() == (0.0, 0.0), "the standby leads or trains while the leader holds the lease"
            assert leader.metrics()[0] == 1.0
            time.sleep(0.25)

        last_renewal = _lease(coordination, namespace).renew_time
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(30)
        spec = wait_for(lambda: (s := _lease(coordination, namespace)) and s.holder_identity == standby.name and s,
                        timeout_s=120, what="the standby to take the lease over", interval_s=0.2)
        # Taken once the lease expired, not before (no two leaders), and promptly after (within one
        # lease duration plus a couple of retry rounds and a loaded machine's slack).
        handover_s = (spec.acquire_time - last_renewal).total_seconds()
        assert LEASE_DURATION_S - RETRY_PERIOD_S <= handover_s <= LEASE_DURATION_S + 2 * RETRY_PERIOD_S + 5, handover_s
        assert spec.lease_transitions >= 1
        wait_for(lambda: (m := standby.metrics()) and m[0] == 1.0, timeout_s=60,
                 what="the new leader to report leading", interval_s=0.2)
    finally:
        for replica in replicas.values():
            replica.stop()
