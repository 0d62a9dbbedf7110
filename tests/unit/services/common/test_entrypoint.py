from __future__ import annotations

import subprocess
import sys

import pytest

from services.common.entrypoint import load_service_config
from services.ingester.config import IngesterConfig


def test_config_file_and_env_reach_the_service(tmp_path, monkeypatch):
    path = tmp_path / "ingester.yaml"
    path.write_text("kafka:\n  bootstrap_servers: kafka:9092\n")
    monkeypatch.setenv("STREAMREC_INGESTER_DEDUP_WINDOW", "5")
    config = load_service_config(IngesterConfig, ["--config", str(path)], service="ingester", description="")
    assert config.kafka.bootstrap_servers == "kafka:9092"
    assert config.ingester.dedup_window == 5


def test_invalid_config_stops_with_exit_code_2_naming_the_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STREAMREC_INGESTER_DEDUP_WINDOW", "-3")
    with pytest.raises(SystemExit) as exit_:
        load_service_config(IngesterConfig, [], service="ingester", description="")
    assert exit_.value.code == 2
    assert "ingester.dedup_window" in capsys.readouterr().err


@pytest.mark.parametrize("service", ["registry", "ingester", "trainer", "inference"])
def test_every_service_refuses_an_unknown_key_before_starting(tmp_path, service):
    path = tmp_path / "c.yaml"
    path.write_text(f"{service}:\n  no_such_key: 1\n")
    proc = subprocess.run([sys.executable, "-m", f"services.{service}", "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"{service}.no_such_key" in proc.stderr


class _Service:
    """Ends when stopped, or fails in ``wait`` when told to."""

    def __init__(self, fail: bool = False) -> None:
        import threading

        self.stopped = threading.Event()
        self.fail = fail
        self.calls: list[str] = []

    def start(self):
        self.calls.append("start")
        return self

    def stop(self) -> None:
        self.calls.append("stop")
        self.stopped.set()

    def wait(self) -> int:
        if self.fail:
            raise RuntimeError("the loop died")
        self.stopped.wait(30)
        return 0

    def ready(self) -> bool:
        return True


def test_run_service_stops_on_sigterm_and_exits_0():
    import os
    import signal
    import threading

    from services.common.entrypoint import run_service

    service = _Service()
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    try:
        assert run_service(service, name="test") == 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert service.calls[:2] == ["start", "stop"]


def test_run_service_turns_an_error_into_exit_code_1_and_stops_the_service():
    import signal

    from services.common.entrypoint import run_service

    service = _Service(fail=True)
    try:
        assert run_service(service, name="test") == 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert service.calls == ["start", "stop"]


def test_what_a_service_built_while_starting_is_out_of_the_collectors_full_passes():
    import gc
    import signal

    from services.common.entrypoint import run_service

    class Starting(_Service):
        def start(self):
            self.state = [[i] for i in range(1000)]  # e.g. modules, settings, the first model
            return super().start()

        def wait(self) -> int:
            walked = {id(o) for o in gc.get_objects()}
            self.walked = sum(id(x) in walked for x in self.state)
            return 0

    service = Starting()
    try:
        assert run_service(service, name="test") == 0
    finally:
        gc.unfreeze()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert service.walked == 0


_STUCK_SERVICE = """
import os, signal, sys, threading
from services.common.entrypoint import run_service

class Stuck:
    def start(self):
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    def stop(self):
        threading.Event().wait()  # e.g. a final commit to a Kafka that is gone
    def wait(self):
        threading.Event().wait()
    def ready(self):
        return True

sys.exit(run_service(Stuck(), name="stuck", stop_timeout_s=float(sys.argv[1])))
"""


def test_a_service_that_cannot_stop_exits_with_code_1_after_its_stop_timeout_saying_where_it_was():
    import time

    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _STUCK_SERVICE, "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started >= 2.0, "it was given its stop timeout"
    assert "stuck did not stop within 2s of the signal (lifecycle.stop_timeout_s)" in proc.stderr
    assert "thread shutdown:" in proc.stderr and "in stop" in proc.stderr, "the stuck thread's stack is logged"


def test_a_service_that_stops_in_time_is_not_cut_short():
    service = """
import os, signal, sys, threading, time
from services.common.entrypoint import run_service

class Slow:
    def __init__(self):
        self.done = threading.Event()
    def start(self):
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    def stop(self):
        time.sleep(1.0)  # a drain that takes a while, within the deadline
        self.done.set()
    def wait(self):
        self.done.wait()
        return 0
    def ready(self):
        return True

sys.exit(run_service(Slow(), name="slow", stop_timeout_s=60))
"""
    proc = subprocess.run([sys.executable, "-c", service], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "did not stop" not in proc.stderr
