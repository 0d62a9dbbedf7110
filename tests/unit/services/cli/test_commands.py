from __future__ import annotations

import subprocess
import sys

from services import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("up", "ingester", "trainer", "registry", "inference", "publish", "recommend", "models", "bench"):
        assert f"  {name} " in out


def test_unknown_command_is_a_usage_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_bench_help_lists_the_benchmarks():
    out = subprocess.run([sys.executable, "-m", "services.cli", "bench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "quality" in out.stdout
