"""The container images the chart points at: CPU (Dockerfile) and CUDA/TensorRT (Dockerfile.gpu).

No Docker daemon here, so the recipes are checked as text against what the chart and pyproject expect.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.unit.charts.chart import COMPONENTS, container, render, workload

ROOT = Path(__file__).resolve().parents[3]


def _stages(path: Path) -> list[list[str]]:
    """Instructions (continuation lines joined) grouped by FROM stage."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", path.read_text(), re.M))


@pytest.mark.parametrize("name, base, extra", [
    ("Dockerfile", "python:3.11-slim", "postgres,s3"),
    ("Dockerfile.gpu", "nvidia/cuda:", "gpu,postgres,s3"),
])
def test_image_recipe(name, base, extra):
    path = ROOT / name
    stages = _stages(path)
    args = _args(path)
    assert any(v.startswith(base) for v in args.values()), f"{name} is not based on {base}"
    final = stages[-1]
    # Runs as the chart's non-root uid, starts the `streamrec` command.
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] == "10001"
    assert 'ENTRYPOINT ["streamrec"]' in final
    build = "\n".join(line for stage in stages for line in stage)
    assert re.search(r'pip install .*"\.\[\$\{EXTRAS\}\]"', build)
    assert args["EXTRAS"] == extra
    # Every package setuptools ships is copied into the build.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert f"COPY {package}/ {package}/" in build, package
    assert "COPY pyproject.toml README.md ./" in build
    if extra.startswith("gpu"):
        assert "gpu" in project["project"]["optional-dependencies"]


def test_chart_runs_as_the_image_user_and_defaults_to_its_tag():
    import yaml

    chart = yaml.safe_load((ROOT / "charts" / "streamrec" / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert chart["appVersion"] == project["project"]["version"]  # the image tag the chart defaults to
    docs = render()
    for component in COMPONENTS:
        spec = workload(docs, component)["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsUser"] == 10001
        assert container(workload(docs, component))["image"] == "ghcr.io/streamrec/streamrec:0.1.0"


def test_dockerignore_keeps_the_context_small():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", "tests", "charts", "**/__pycache__"} <= ignored
    for needed in ("pyproject.toml", "README.md", "services", "recmodel", "streamrec_proto", "bench"):
        assert needed not in ignored
