"""Prometheus metrics and the HTTP endpoint every service serves.

Metric names follow ``streamrec_<service>_<what>_<unit>``. Each service builds its metrics on its
own ``CollectorRegistry`` (so several services can share one process in tests) and serves it with
``MetricsServer``, which also answers ``/healthz`` (the process is alive) and ``/readyz`` (the
service says it is ready) for Kubernetes probes. A connection that sends nothing (or trickles) is
closed after ``socket_timeout_s``, so idle or hostile clients cannot pile up threads.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)

# Latency buckets from 0.5 ms to 10 s: gRPC calls, batch processing, model loads.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on a background thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = "0.0.0.0",
        port: int = 9100,
        ready: Callable[[], bool] = lambda: True,
        live: Callable[[], bool] = lambda: True,
        socket_timeout_s: float = 10.0,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.live = live
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            timeout = socket_timeout_s  # applied to the connection's socket by StreamRequestHandler

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = generate_latest(server_self.registry), 200, CONTENT_TYPE_LATEST
                elif path in ("/healthz", "/livez"):
                    ok = server_self.live()
                    body, status, ctype = (b"ok\n" if ok else b"unhealthy\n"), (200 if ok else 503), "text/plain"
                elif path == "/readyz":
                    ok = server_self.ready()
                    body, status, ctype = (b"ready\n" if ok else b"not ready\n"), (200 if ok else 503), "text/plain"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes every few seconds: keep them out of logs
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> "MetricsServer":
        self._thread.start()
        logger.info("metrics listening", extra={"port": self.port})
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
