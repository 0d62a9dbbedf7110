"""Which lease elector a trainer replica uses: a Kubernetes Lease when leader election is on, else none."""

from __future__ import annotations

from services.trainer.config import TrainerConfig


def build_elector(config: TrainerConfig, metrics=None):
    from services.trainer.leader import (
        AlwaysLeader,
        LeaseElector,
        coordination_api,
        default_identity,
        default_namespace,
    )

    le = config.trainer.leader_election
    if not le.enabled:
        return AlwaysLeader()
    return LeaseElector(
        coordination_api(le.kubeconfig), name=le.lease_name, namespace=le.namespace or default_namespace(),
        identity=le.identity or default_identity(), lease_duration_s=le.lease_duration_s,
        renew_deadline_s=le.renew_deadline_s, retry_period_s=le.retry_period_s,
        on_loop_restart=(lambda loop, _exc: metrics.loop_restarts.labels(loop).inc()) if metrics else None)
