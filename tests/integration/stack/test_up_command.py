"""`streamrec up`, the README's first command, as a user runs it: banner, progress, a served model, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from services.common.net import free_port
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT handled as in a terminal's foreground job: a test run started in the background (``cmd &`` from a
    script) inherits it ignored, and a Python child then ignores Ctrl-C too."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _read_until(proc: subprocess.Popen, needle: str, lines: list[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no {needle!r} in the output:\n{''.join(lines[-40:])}")


def _processes_using(path: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmdline and int(pid) != os.getpid():
            found.append(cmdline)
    return found


def test_up_prints_where_things_listen_serves_a_model_and_stops_cleanly_on_ctrl_c(tmp_path):
    work = tmp_path / "stack"
    tls_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--work-dir", str(work), "--fresh", "--rate", "300",
         "--export-interval", "8", "--kafka-port", str(free_port()), "--kafka-tls-port", str(tls_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, preexec_fn=_ctrl_c_as_in_a_terminal)
    lines: list[str] = []
    try:
        _read_until(proc, "streamrec is up", lines, 240)
        _read_until(proc, "Ctrl-C stops everything", lines, 10)
        banner = "".join(lines)
        for expected in ("registry    grpc 127.0.0.1:50051", "inference   grpc 127.0.0.1:50052",
                         f"kafka       127.0.0.1:{tls_port} (mutual TLS, ACLs per service)",
                         "http://127.0.0.1:9103/metrics", "streamrec recommend ", "streamrec models list"):
            assert expected in banner
        # The user the banner suggests trying.
        user = banner.split("streamrec recommend ", 1)[1].split()[0]
        _read_until(proc, "| serving v", lines, 300)

        # The CLI finds the stack's credentials in .streamrec/tls, or where STREAMREC_TLS_DIR says.
        env = {**os.environ, "STREAMREC_TLS_DIR": str(work / "tls")}
        rec = subprocess.run([sys.executable, "-m", "services.cli", "recommend", user, "--k", "5"],
                             capture_output=True, text=True, timeout=30, env=env)
        assert rec.returncode == 0, rec.stderr
        assert "score" in rec.stdout and "items from model" in rec.stdout
        models = subprocess.run([sys.executable, "-m", "services.cli", "models", "list"],
                                capture_output=True, text=True, timeout=30, env=env)
        assert models.returncode == 0 and "production" in models.stdout, models.stdout + models.stderr
        _only_the_operator_moves_production(env, lines, proc)

        proc.send_signal(signal.SIGINT)
        # Each service gets up to 30 s to drain and checkpoint; on a busy 2-core machine that adds up.
        _read_until(proc, "stopped; nothing left running.", lines, 300)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not _processes_using(str(work)), "every process the stack started has exited"


# Another process on the machine, without the stack's credentials, tries the registry's control plane.
_INTRUDER = """
import grpc
from streamrec_proto.v1 import registry_pb2 as pb, registry_pb2_grpc as rpc
stub = rpc.ModelRegistryStub(grpc.insecure_channel("127.0.0.1:50051"))
calls = {
    "SetAlias": lambda: stub.SetAlias(pb.SetAliasRequest(model_name="recommender", alias="production", version=1), timeout=30),
    "Rollback": lambda: stub.Rollback(pb.RollbackRequest(model_name="recommender"), timeout=30),
    "DownloadArtifact": lambda: list(stub.DownloadArtifact(pb.DownloadArtifactRequest(model_name="recommender", version=1), timeout=30)),
}
for name, call in calls.items():
    try:
        call()
        print(name, "OK")
    except grpc.RpcError as exc:
        print(name, exc.code().name)
"""


def _only_the_operator_moves_production(env: dict, lines: list[str], proc: subprocess.Popen) -> None:
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                              timeout=60, env=env)

    intruder = subprocess.run([sys.executable, "-c", _INTRUDER], capture_output=True, text=True, timeout=60)
    assert intruder.returncode == 0, intruder.stderr
    refused = dict(line.split() for line in intruder.stdout.splitlines())
    assert refused == {"SetAlias": "UNAVAILABLE", "Rollback": "UNAVAILABLE", "DownloadArtifact": "UNAVAILABLE"}
    # Without the operator's credentials the CLI says where it looked instead of calling in plaintext.
    lost = cli("models", "list", "--tls-dir", "/nonexistent")
    assert lost.returncode == 2 and "no credentials for 'operator'" in lost.stderr

    def versions():
        listed = cli("models", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        return json.loads(listed.stdout)

    listed = wait_for(lambda: (lambda vs: vs if len(vs) >= 2 else None)(versions()), 300, "a second model version",
                      interval_s=2.0)
    production = next(int(v["version"]) for v in listed if "production" in v.get("aliases", []))
    other = next(int(v["version"]) for v in listed if int(v["version"]) != production)
    promoted = cli("models", "promote", str(other), "--reason", "up test")
    assert promoted.returncode == 0 and f"production -> recommender v{other}" in promoted.stdout, promoted.stderr
    rolled = cli("models", "rollback", "--reason", "up test")
    assert rolled.returncode == 0 and "production rolled back -> recommender v" in rolled.stdout, rolled.stderr


def test_a_killed_up_takes_every_process_it_started_with_it(tmp_path):
    work = tmp_path / "stack"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--work-dir", str(work), "--fresh",
         "--kafka-port", str(free_port()), "--kafka-tls-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        _read_until(proc, "streamrec is up", [], 240)
        assert _processes_using(str(work)), "the stack runs its services"
    finally:
        proc.kill()  # no chance to clean up: the children must notice on their own
        proc.wait()
    # Each service stops within its lifecycle.stop_timeout_s (30 s) even with Kafka gone at the same moment.
    try:
        wait_for(lambda: not _processes_using(str(work)), 120, "the services and Kafka to exit", interval_s=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; still running: {_processes_using(str(work))}") from None
