"""Leader election over a coordination.k8s.io/v1 Lease, with client-go's semantics.

Exactly one replica trains at a time. A candidate reads the Lease; if nobody holds it, or the
holder has not renewed it for ``leaseDurationSeconds`` (measured on *our* monotonic clock from the
moment we last saw the record change, so clock skew between pods does not matter), it writes itself
in as ``holderIdentity`` with the ``resourceVersion`` it read: if another candidate wrote first the API
server answers 409 Conflict and we stay a standby. The leader renews every ``retry_period``; if it
cannot renew for ``renew_deadline`` (< lease duration) it stops leading *before* anyone else may take
over. ``leaseTransitions`` counts changes of holder and serves as the leadership epoch.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from kubernetes.client import CoordinationV1Api, V1Lease, V1LeaseSpec, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from services.common.supervision import SupervisedThread

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def default_namespace() -> str:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as fh:
            return fh.read().strip() or "default"
    except OSError:
        return os.environ.get("POD_NAMESPACE", "default")


def coordination_api(kubeconfig: str = "") -> CoordinationV1Api:
    """In-cluster config (the pod's service account), else a kubeconfig file."""
    from kubernetes import config as kube_config

    if kubeconfig:
        kube_config.load_kube_config(config_file=kubeconfig)
    else:
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException:
            kube_config.load_kube_config()
    return CoordinationV1Api()


class LeaseElector:
    """Acquires, renews and releases one Lease; ``is_leader()`` is safe to call from any thread."""

    def __init__(
        self,
        api: CoordinationV1Api,
        *,
        name: str,
        namespace: str,
        identity: str,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
        on_loop_restart: Callable[[str, BaseException | None], None] | None = None,
        on_loop_health: Callable[[str, bool], None] | None = None,
    ) -> None:
        if not retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError("need retry_period_s < renew_deadline_s < lease_duration_s")
        self.api = api
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.clock = clock
        self.on_change = on_change
        self._observed: tuple | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None  # our clock at the last successful acquire/renew
        self.epoch = -1  # leaseTransitions when we acquired it
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Supervised: a round that raises (a callback, an unexpected API answer) restarts the loop
        # instead of silently letting the lease lapse.
        self.supervisor = SupervisedThread("lease-elector", self.run, self._stop, initial_backoff_s=min(1.0, retry_period_s),
                                           max_backoff_s=retry_period_s, on_restart=on_loop_restart,
                                           on_health=on_loop_health)
        self._was_leader = False

    # ------------------------------------------------------------------ one round
    def _observe(self, spec: V1LeaseSpec) -> None:
        record = (spec.holder_identity, spec.renew_time, spec.acquire_time, spec.lease_transitions,
                  spec.lease_duration_seconds)
        if record != self._observed:
            self._observed = record
            self._observed_at = self.clock()

    def _new_spec(self, old: V1LeaseSpec | None) -> V1LeaseSpec:
        now = datetime.now(timezone.utc)
        holder = old.holder_identity if old is not None else None
        transitions = (old.lease_transitions or 0) if old is not None else 0
        mine = holder == self.identity
        if old is not None and not mine:
            transitions += 1
        return V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=max(1, math.ceil(self.lease_duration_s)),
            acquire_time=old.acquire_time if (old is not None and mine and old.acquire_time) else now,
            renew_time=now,
            lease_transitions=transitions,
        )

    def try_acquire_or_renew(self) -> bool:
        """One round against the API server; True when we hold the lease afterwards."""
        timeout = self.retry_period_s
        start = self.clock()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status != 404:
                logger.warning("lease read failed", extra={"lease": self.name, "status": exc.status})
                return False
            body = V1Lease(metadata=V1ObjectMeta(name=self.name, namespace=self.namespace), spec=self._new_spec(None))
            try:
                created = self.api.create_namespaced_lease(self.namespace, body, _request_timeout=timeout)
            except ApiException as exc2:
                if exc2.status != 409:  # 409: another candidate created it first
                    logger.warning("lease create failed", extra={"lease": self.name, "status": exc2.status})
                return False
            self._won(created.spec, start)
            return True
        except Exception as exc:  # network errors (urllib3) are not ApiExceptions
            logger.warning("lease read failed", extra={"lease": self.name, "error": str(exc)})
            return False

        spec = lease.spec or V1LeaseSpec()
        self._observe(spec)
        holder = spec.holder_identity or ""
        duration = spec.lease_duration_seconds or self.lease_duration_s
        if holder and holder != self.identity and self._observed_at + duration > self.clock():
            return False  # held by someone else who renewed recently enough
        lease.spec = self._new_spec(spec)
        try:
            # metadata.resourceVersion from the read makes this a compare-and-swap.
            updated = self.api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status != 409:
                logger.warning("lease update failed", extra={"lease": self.name, "status": exc.status})
            return False
        except Exception as exc:
            logger.warning("lease update failed", extra={"lease": self.name, "error": str(exc)})
            return False
        self._won(updated.spec, start)
        return True

    def _won(self, spec: V1LeaseSpec, started_at: float) -> None:
        self._observe(spec)
        with self._lock:
            if self._renewed_at is None or not self._holding():
                self.epoch = spec.lease_transitions or 0
            # Count from when the request was sent: the server may have stamped renewTime any time after.
            self._renewed_at = started_at

    # ------------------------------------------------------------------ state
    def _holding(self) -> bool:
        return self._renewed_at is not None and self.clock() - self._renewed_at < self.renew_deadline_s

    def is_leader(self) -> bool:
        """True while the last successful renewal is younger than the renew deadline."""
        with self._lock:
            return self._holding()

    def _notify(self) -> None:
        now = self.is_leader()
        if now != self._was_leader:
            self._was_leader = now
            logger.info("leadership changed", extra={"lease": self.name, "identity": self.identity,
                                                      "leader": now, "epoch": self.epoch})
            if self.on_change:
                self.on_change(now)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Acquire / renew until ``stop()``; renewals every ``retry_period``."""
        while not self._stop.is_set():
            self.try_acquire_or_renew()
            self._notify()
            self._stop.wait(self.retry_period_s)
        self._notify()

    def start(self) -> "LeaseElector":
        self.supervisor.start()
        return self

    @property
    def healthy(self) -> bool:
        return self.supervisor.healthy

    def wait_for_leadership(self, stop: threading.Event, poll_s: float = 0.1) -> bool:
        while not stop.is_set():
            if self.is_leader():
                return True
            stop.wait(poll_s)
        return False

    def stop(self, release: bool = True) -> None:
        self.supervisor.stop(self.retry_period_s + 5)
        if release:
            self.release()

    def release(self) -> None:
        """Hand the lease back (holder cleared) so a standby need not wait for it to expire."""
        with self._lock:
            held = self._holding()
            self._renewed_at = None
        if not held:
            return
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.retry_period_s)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = datetime.now(timezone.utc)
            self.api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=self.retry_period_s)
            logger.info("lease released", extra={"lease": self.name, "identity": self.identity})
        except Exception as exc:  # it expires on its own anyway
            logger.warning("lease release failed", extra={"lease": self.name, "error": str(exc)})
        self._notify()


class AlwaysLeader:
    """Leader election switched off (the local stack runs one trainer)."""

    epoch = 0
    identity = default_identity()

    def is_leader(self) -> bool:
        return True

    def start(self) -> "AlwaysLeader":
        return self

    def wait_for_leadership(self, stop: threading.Event, poll_s: float = 0.1) -> bool:
        return not stop.is_set()

    def stop(self, release: bool = True) -> None:
        pass
