"""Lease election against a fake Kubernetes API server (a real HTTP server, driven through the real
kubernetes client). It checks the election logic, not a real cluster."""

from __future__ import annotations

import threading
import time

import pytest

from services.trainer.leader import LeaseElector
from tests.unit.services.trainer.fake_kube import FakeLeaseServer
from tests.waiting import wait_for


class ManualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def server():
    srv = FakeLeaseServer().start()
    yield srv
    srv.stop()


def _elector(server, identity, clock=time.monotonic, **kw):
    opts = dict(lease_duration_s=3, renew_deadline_s=2, retry_period_s=0.5)
    opts.update(kw)
    return LeaseElector(server.api(), name="trainer", namespace="default", identity=identity, clock=clock, **opts)


def test_first_candidate_creates_the_lease_and_second_stays_standby(server):
    clock = ManualClock()
    a, b = _elector(server, "a", clock), _elector(server, "b", clock)
    assert a.try_acquire_or_renew() and a.is_leader()
    spec = server.spec("trainer")
    assert spec["holderIdentity"] == "a" and spec["leaseTransitions"] == 0 and spec["leaseDurationSeconds"] == 3
    assert not b.try_acquire_or_renew() and not b.is_leader()
    # The leader renews: renewTime moves, the holder and the transition count do not.
    clock.t += 1
    first_renew = spec["renewTime"]
    time.sleep(0.01)
    assert a.try_acquire_or_renew()
    spec = server.spec("trainer")
    assert spec["holderIdentity"] == "a" and spec["leaseTransitions"] == 0 and spec["renewTime"] != first_renew
    clock.t += 2.5  # b saw the record change 2.5 s ago: not expired yet
    assert not b.try_acquire_or_renew()


def test_standby_takes_over_when_the_leader_stops_renewing(server):
    clock = ManualClock()
    a, b = _elector(server, "a", clock), _elector(server, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock.t += 2.1
    assert not a.is_leader()  # past its renew deadline without renewing: it must stop training
    assert not b.try_acquire_or_renew()  # but the lease itself has not expired yet
    clock.t += 1.0
    assert b.try_acquire_or_renew() and b.is_leader()
    spec = server.spec("trainer")
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1 and b.epoch == 1
    # The old leader comes back: the lease is b's and fresh.
    assert not a.try_acquire_or_renew() and not a.is_leader()


def test_conflicting_write_loses_the_race(server):
    clock = ManualClock()
    a, b = _elector(server, "a", clock), _elector(server, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock.t += 3.5  # a's lease expired as far as b can tell
    # Between b's read and b's write, a (say) renews: b's write carries a stale resourceVersion.
    server.on_get = lambda ns, name: (server.bump(name, ns), setattr(server, "on_get", None))
    assert not b.try_acquire_or_renew() and not b.is_leader()
    assert ("PUT", "/apis/coordination.k8s.io/v1/namespaces/default/leases/trainer", 409) in server.requests
    assert server.spec("trainer")["holderIdentity"] == "a"


def test_two_candidates_creating_at_once_get_one_leader(server):
    electors = [_elector(server, f"c{i}") for i in range(4)]
    barrier = threading.Barrier(len(electors))
    results = {}

    def go(e):
        barrier.wait()
        results[e.identity] = e.try_acquire_or_renew()

    threads = [threading.Thread(target=go, args=(e,)) for e in electors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [k for k, v in results.items() if v]
    assert len(winners) == 1 and server.spec("trainer")["holderIdentity"] == winners[0]


def test_leader_that_cannot_renew_steps_down_before_the_lease_expires(server):
    changes = []
    a = _elector(server, "a", on_change=changes.append).start()
    try:
        deadline = time.monotonic() + 5
        while not a.is_leader() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert a.is_leader()
        server.fail = True  # the API server becomes unreachable
        lost_at = time.monotonic()
        while a.is_leader() and time.monotonic() < lost_at + 5:
            time.sleep(0.02)
        stepped_down_after = time.monotonic() - lost_at
        assert not a.is_leader()
        assert stepped_down_after < 3  # within renew_deadline (2 s) + one retry, before the 3 s lease ends
        deadline = time.monotonic() + 2
        while changes != [True, False] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert changes == [True, False]
    finally:
        server.fail = False
        a.stop(release=False)


def test_release_lets_a_standby_take_over_without_waiting(server):
    a = _elector(server, "a", lease_duration_s=30, renew_deadline_s=20, retry_period_s=0.2).start()
    b = _elector(server, "b", lease_duration_s=30, renew_deadline_s=20, retry_period_s=0.2).start()
    try:
        deadline = time.monotonic() + 5
        while not (a.is_leader() or b.is_leader()) and time.monotonic() < deadline:
            time.sleep(0.02)
        leader, standby = (a, b) if a.is_leader() else (b, a)
        time.sleep(0.5)
        assert not standby.is_leader()
        leader.stop(release=True)
        deadline = time.monotonic() + 5
        while not standby.is_leader() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert standby.is_leader()  # well before the 30 s lease would have expired
        assert server.spec("trainer")["leaseTransitions"] == 1
    finally:
        a.stop(release=False)
        b.stop(release=False)


def test_an_elector_loop_that_dies_is_restarted_and_keeps_the_lease(server):
    changes, restarts = [], []

    def on_change(leader: bool) -> None:  # injected failure: the first leadership callback raises
        changes.append(leader)
        if len(changes) == 1:
            raise RuntimeError("injected failure")

    a = _elector(server, "a", on_change=on_change,
                 on_loop_restart=lambda loop, exc: restarts.append((loop, str(exc)))).start()
    try:
        wait_for(lambda: restarts, 60, "the elector loop to be restarted")
        assert restarts == [("lease-elector", "injected failure")]
        # The restarted loop goes on renewing: the lease stays a's well past its renew deadline.
        time.sleep(2.5)
        assert a.is_leader() and a.healthy and server.spec("trainer")["holderIdentity"] == "a"
    finally:
        a.stop()
