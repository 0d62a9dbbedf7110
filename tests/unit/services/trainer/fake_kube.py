"""A small real HTTP server speaking the Kubernetes Lease API (GET/POST/PUT), for election tests.

It implements what the election relies on: 404 for a missing lease, 409 AlreadyExists on a second
create, and optimistic concurrency on update (409 Conflict when the PUT's metadata.resourceVersion is
not the stored one). ``fail`` makes every request answer 500 (an unreachable API server);
``on_get`` lets a test interleave another writer between a candidate's read and its write.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from kubernetes.client import ApiClient, Configuration, CoordinationV1Api

_ITEM = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases/([^/?]+)")
_LIST = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases/?(\?.*)?$")


class FakeLeaseServer:
    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict] = {}
        self.version = 0
        self.fail = False
        self.on_get: Callable[[str, str], None] | None = None
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, int]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                # Logged before the client can see the answer, so the log is complete when it acts on it.
                fake.requests.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": reason, "message": message, "code": code})

            def do_GET(self) -> None:
                m = _ITEM.match(self.path)
                if fake.fail or not m:
                    return self._status(500, "InternalError", "unavailable")
                key = (m.group(1), m.group(2))
                with fake.lock:
                    lease = fake.leases.get(key)
                    body = json.loads(json.dumps(lease)) if lease else None
                if body is None:
                    return self._status(404, "NotFound", f'leases "{key[1]}" not found')
                # The interleaved writer runs before the reader gets its (now stale) copy, so the
                # reader's write always comes after it.
                if fake.on_get:
                    fake.on_get(*key)
                self._send(200, body)

            def do_POST(self) -> None:
                m = _LIST.match(self.path)
                if fake.fail or not m:
                    return self._status(500, "InternalError", "unavailable")
                body = self._body()
                key = (m.group(1), body["metadata"]["name"])
                with fake.lock:
                    if key in fake.leases:
                        return self._status(409, "AlreadyExists", f'leases "{key[1]}" already exists')
                    fake.version += 1
                    body["metadata"].update(namespace=key[0], resourceVersion=str(fake.version))
                    body.update(apiVersion="coordination.k8s.io/v1", kind="Lease")
                    fake.leases[key] = body
                self._send(201, body)

            def do_PUT(self) -> None:
                m = _ITEM.match(self.path)
                if fake.fail or not m:
                    return self._status(500, "InternalError", "unavailable")
                key = (m.group(1), m.group(2))
                body = self._body()
                with fake.lock:
                    current = fake.leases.get(key)
                    if current is None:
                        return self._status(404, "NotFound", f'leases "{key[1]}" not found')
                    if body.get("metadata", {}).get("resourceVersion") != current["metadata"]["resourceVersion"]:
                        return self._status(409, "Conflict", "the object has been modified; please apply your "
                                            "changes to the latest version and try again")
                    fake.version += 1
                    body["metadata"]["resourceVersion"] = str(fake.version)
                    body.update(apiVersion="coordination.k8s.io/v1", kind="Lease")
                    fake.leases[key] = body
                self._send(200, body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> "FakeLeaseServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def api(self) -> CoordinationV1Api:
        """A real kubernetes-client API object pointed at this server."""
        cfg = Configuration(host=self.url)
        return CoordinationV1Api(ApiClient(cfg))

    def spec(self, name: str, namespace: str = "default") -> dict:
        with self.lock:
            return dict(self.leases[(namespace, name)]["spec"])

    def bump(self, name: str, namespace: str = "default", holder: str | None = None) -> None:
        """Another writer updates the lease (new resourceVersion, optionally a new holder)."""
        with self.lock:
            lease = self.leases[(namespace, name)]
            self.version += 1
            lease["metadata"]["resourceVersion"] = str(self.version)
            if holder is not None:
                lease["spec"]["holderIdentity"] = holder
