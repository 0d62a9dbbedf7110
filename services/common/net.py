"""Picking a free TCP port for a server that another process will start (a broker, a service in a stack).

The usual trick, binding port 0 and closing the socket, returns a port from the kernel's ephemeral
range: the range the kernel also draws the local ports of outgoing connections from. Between the
pick and the server's bind, any client on the machine (a Kafka client opening a connection, a
gRPC channel) can be given that port, and the server then fails with "address already in use" (a benchmark's stack lost its inference service to
it: gRPC could not bind the port picked for it a moment before). So the port is
drawn at random from below the ephemeral range, where the kernel never hands out ports by itself,
and checked by binding it; ports handed out by this process are not handed out again.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_LINUX_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_RANGE = (49152, 65535)  # IANA's dynamic ports: the ephemeral range of macOS and Windows
_LOWEST = 10000  # below: ports that well-known and registered services often use
_rng = random.SystemRandom()  # not the random module's state, which forked processes share
_lock = threading.Lock()
_handed_out: set[int] = set()


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (inclusive)."""
    try:
        low, high = (int(v) for v in _LINUX_RANGE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return _DEFAULT_RANGE


def _candidates() -> tuple[int, int]:
    low, high = ephemeral_port_range()
    if low - _LOWEST >= 1000:
        return _LOWEST, low - 1
    if 65535 - high >= 1000:
        return high + 1, 65535
    return 1024, 65535  # the ephemeral range covers nearly everything: any port, checked by binding


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A TCP port that is free on ``host`` now and outside the ephemeral range (see the module docstring)."""
    low, high = _candidates()
    with _lock:
        for _ in range(attempts):
            port = _rng.randint(low, high)
            if port not in _handed_out and _bindable(host, port):
                _handed_out.add(port)
                return port
        # Every draw was taken (a crowded machine): fall back to a port of the kernel's choosing.
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        _handed_out.add(port)
        return port
