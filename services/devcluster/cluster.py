"""A Kubernetes control plane on loopback: etcd plus kube-apiserver, both built from Go sources.

There are no kubelets, controller-manager or scheduler: objects are stored, validated, admitted
(RBAC, Pod Security, CRD schemas) and served, but pods never run. That is what a chart install,
an upgrade, an uninstall or a Lease election needs.

Secured like a real cluster: the API server serves only TLS (a certificate from a CA of its own)
and authenticates every request (a bearer token in the written kubeconfig, in ``system:masters``);
etcd speaks mutual TLS to it. Service-account tokens are signed with a generated key.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.common.net import free_port
from services.common.tls import LocalCA
from services.devcluster.build import build_all

log = logging.getLogger(__name__)

ADMIN_USER = "streamrec-admin"


class ClusterError(RuntimeError):
    """The control plane did not come up (the message names which part, with its log's tail)."""


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _write_service_account_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)


class LocalKubeCluster:
    """``start()`` builds (once) and runs etcd and kube-apiserver; ``stop()`` ends both and removes the state."""

    def __init__(self, work_dir: str | Path | None = None, *, cache_dir: Path | None = None,
                 kubeconfig: str | Path | None = None, ready_timeout_s: float = 300.0) -> None:
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="streamrec-kube-"))
        self.cache_dir = cache_dir
        self.kubeconfig = Path(kubeconfig) if kubeconfig else self.work_dir / "kubeconfig"
        self.ready_timeout_s = ready_timeout_s
        self.port = 0
        self.token = ""
        self._procs: list[tuple[str, subprocess.Popen, Path]] = []

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.work_dir / "pki" / "ca.crt"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "LocalKubeCluster":
        etcd_bin, apiserver_bin = build_all(self.cache_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        ca = LocalCA(self.work_dir / "pki", name="streamrec dev cluster CA")
        apiserver_cert, apiserver_key = ca.issue("kube-apiserver", hosts=("localhost", "127.0.0.1", "kubernetes",
                                                                         "kubernetes.default.svc"))
        etcd_cert, etcd_key = ca.issue("etcd")
        etcd_client_cert, etcd_client_key = ca.issue("etcd-client")
        sa_key = self.work_dir / "pki" / "service-account.key"
        _write_service_account_key(sa_key)
        self.token = secrets.token_urlsafe(32)
        tokens = self.work_dir / "pki" / "tokens.csv"
        tokens.write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        os.chmod(tokens, 0o600)

        client_port, peer_port, self.port = free_port(), free_port(), free_port()
        etcd_url, peer_url = f"https://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        try:
            self._spawn("etcd", [
                str(etcd_bin), "--name", "default", "--data-dir", str(self.work_dir / "etcd"),
                "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"default={peer_url}",
                "--cert-file", str(etcd_cert), "--key-file", str(etcd_key),
                "--client-cert-auth", "--trusted-ca-file", str(ca.ca_file),
                # Throwaway state in a temporary directory: durability buys nothing, fsync costs a lot.
                "--unsafe-no-fsync", "--log-level", "warn",
            ])
            self._spawn("kube-apiserver", [
                str(apiserver_bin),
                "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
                "--secure-port", str(self.port), "--cert-dir", str(self.work_dir / "pki"),
                "--tls-cert-file", str(apiserver_cert), "--tls-private-key-file", str(apiserver_key),
                "--etcd-servers", etcd_url, "--etcd-cafile", str(ca.ca_file),
                "--etcd-certfile", str(etcd_client_cert), "--etcd-keyfile", str(etcd_client_key),
                "--token-auth-file", str(tokens), "--client-ca-file", str(ca.ca_file),
                "--anonymous-auth=false", "--authorization-mode", "RBAC",
                "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file", str(sa_key), "--service-account-signing-key-file", str(sa_key),
                # Addresses are only allocated, never routed: no kubelet or proxy runs.
                "--service-cluster-ip-range", "10.96.0.0/16",
                # The `kubernetes` Service's endpoints may not be a loopback address; nothing routes to it here.
                "--endpoint-reconciler-type", "none",
                "--profiling=false", "--v", "1",
            ])
            self.write_kubeconfig(self.kubeconfig)
            self.wait_ready(self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self.work_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self._procs.append((name, proc, log_path))

    def exited(self) -> str | None:
        """A message naming the first component that has exited, or None while both run."""
        for name, proc, log_path in self._procs:
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}:\n{_tail(log_path)}"
        return None

    def _check_alive(self) -> None:
        if (message := self.exited()) is not None:
            raise ClusterError(message)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/readyz`` (authenticated, verified TLS) until it answers 200 or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        context, last = self.ssl_context(), ""
        while time.monotonic() < deadline:
            self._check_alive()
            request = urllib.request.Request(f"{self.server}/readyz",
                                             headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(request, timeout=10, context=context) as resp:
                    if resp.status == 200:
                        log.info("kube-apiserver ready", extra={"server": self.server})
                        return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read()[:500]!r}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.5)
        raise ClusterError(f"kube-apiserver not ready after {timeout_s:.0f}s ({last}):\n"
                           f"{_tail(self.work_dir / 'kube-apiserver.log')}")

    def write_kubeconfig(self, path: Path) -> Path:
        ca_data = base64.b64encode(self.ca_file.read_bytes()).decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: streamrec-dev\n  cluster:\n    server: {self.server}\n"
            f"    certificate-authority-data: {ca_data}\n"
            f"users:\n- name: {ADMIN_USER}\n  user:\n    token: {self.token}\n"
            f"contexts:\n- name: streamrec-dev\n  context:\n    cluster: streamrec-dev\n    user: {ADMIN_USER}\n"
            "current-context: streamrec-dev\n")
        os.chmod(path, 0o600)
        return path

    def stop(self) -> None:
        """The API server first (it holds etcd connections), then etcd; each gets 30 s to exit."""
        for name, proc, _ in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not exit on SIGTERM; killing it", name)
                    proc.kill()
                    proc.wait(10)
        self._procs.clear()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "LocalKubeCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
