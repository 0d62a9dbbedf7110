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
