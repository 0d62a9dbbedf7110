"""Run service processes for the local stack: start, wait until ready, stop cleanly, kill for fault tests."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from services.common.grpc import wait_for_serving
from services.common.tls import TlsConfig
from services.common.process import die_with_parent

logger = logging.getLogger(__name__)


@dataclass
class ServiceProcess:
    """One service (``python -m services.<name> --config FILE``) with its log file."""

    name: str
    config: dict
    work_dir: Path
    metrics_port: int
    grpc_port: int | None = None
    grpc_service: str = ""
    env: dict[str, str] = field(default_factory=dict)
    # Python module run as `python -m services.<module>`; replicas share it under other names.
    module: str = ""
    # Credentials for the readiness probe's gRPC health check (None: plaintext).
    probe_tls: TlsConfig | None = None
    process: subprocess.Popen | None = None
    restarts: int = 0

    @property
    def config_path(self) -> Path:
        return self.work_dir / "config" / f"{self.name}.yaml"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "logs" / f"{self.name}.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def grpc_target(self) -> str | None:
        return f"127.0.0.1:{self.grpc_port}" if self.grpc_port else None

    def start(self) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **self.env}
        # Settings come from the file alone: stray STREAMREC_* variables would silently change the stack.
        env = {k: v for k, v in env.items() if not k.startswith("STREAMREC_") or k in self.env}
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.module or self.name}", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # Ctrl-C reaches the stack, which stops services in order
            preexec_fn=die_with_parent,
        )
        log.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}; see {self.log_path}\n"
                                   + self.tail_log())
            if self.grpc_target and self.grpc_service:
                try:
                    wait_for_serving(self.grpc_target, self.grpc_service, timeout_s=1.0,
                                     tls=self.probe_tls or TlsConfig(plaintext=True))
                    return
                except TimeoutError:
                    continue
            elif self.ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f}s; see {self.log_path}\n" + self.tail_log())

    def tail_log(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 45.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``: longer than a service's own ``lifecycle.stop_timeout_s``
        (30 s), so one that cannot stop logs where it was stuck before it is killed."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("service did not stop in time; killing it", extra={"service": self.name})
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.kill()
        self.restarts += 1
        self.start()
