from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from services.common.metrics import MetricsServer


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_and_probe_endpoints():
    registry = CollectorRegistry()
    Counter("streamrec_demo_things", "things", registry=registry).inc(3)
    state = {"ready": False}
    server = MetricsServer(registry, host="127.0.0.1", port=0, ready=lambda: state["ready"]).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = _get(base + "/metrics")
        assert status == 200 and "streamrec_demo_things_total 3.0" in body
        assert _get(base + "/healthz")[0] == 200
        assert _get(base + "/readyz")[0] == 503
        state["ready"] = True
        assert _get(base + "/readyz")[0] == 200
        assert _get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_a_client_that_sends_nothing_is_disconnected_and_others_are_still_served():
    import socket
    import time

    server = MetricsServer(CollectorRegistry(), host="127.0.0.1", port=0, socket_timeout_s=0.5).start()
    try:
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        idle.sendall(b"GET /metr")  # and never finishes the request
        assert _get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
        started = time.monotonic()
        assert idle.recv(1024) == b""  # the server hung up on it
        assert time.monotonic() - started < 20
        idle.close()
    finally:
        server.stop()
