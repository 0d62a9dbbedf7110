"""free_port: a port a server can bind a moment later, even while clients open connections meanwhile."""

from __future__ import annotations

import socket

from services.common import net


def test_ports_are_bindable_distinct_and_outside_the_kernels_ephemeral_range():
    low, high = net.ephemeral_port_range()
    ports = [net.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(not low <= p <= high for p in ports), [p for p in ports if low <= p <= high]
    for port in ports[:5]:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_a_port_in_use_is_never_handed_out(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        draws = iter([taken, taken, 23456 if taken != 23456 else 23457])
        monkeypatch.setattr(net._rng, "randint", lambda lo, hi: next(draws))
        monkeypatch.setattr(net, "_handed_out", set())
        assert net.free_port() in (23456, 23457)


def test_when_every_draw_is_taken_the_kernel_chooses(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        monkeypatch.setattr(net._rng, "randint", lambda lo, hi: taken)
        port = net.free_port(attempts=3)
        assert port != taken
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))


def test_the_range_follows_the_kernels_setting(monkeypatch, tmp_path):
    setting = tmp_path / "ip_local_port_range"
    setting.write_text("20000\t60999\n")
    monkeypatch.setattr(net, "_LINUX_RANGE", setting)
    assert net.ephemeral_port_range() == (20000, 60999)
    assert net._candidates() == (10000, 19999)
    setting.write_text("1024 64000\n")  # nearly every port is ephemeral: draw above it, where 1,535 remain
    assert net._candidates() == (64001, 65535)
    setting.write_text("garbage")
    assert net.ephemeral_port_range() == net._DEFAULT_RANGE
