"""Dashboards and alert rules: every query parses (promtool) and reads only metrics the services export."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.unit.charts.promql import (
    DASHBOARD_DIR,
    alert_queries,
    dashboard_queries,
    metric_names,
    render_with_monitoring,
    rule_groups,
    split_top_level,
)

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install helm-python-sdk)")

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SERVICES = {"ingester": "IngesterMetrics", "trainer": "TrainerMetrics", "registry": "RegistryMetrics",
            "inference": "InferenceMetrics"}


def exported_names(service: str) -> set[str]:
    """Sample names a service's metrics class exposes (counters as *_total, histograms as _bucket/_sum/_count)."""
    try:
        module = importlib.import_module(f"services.{service}.metrics")
    except ModuleNotFoundError as exc:
        pytest.skip(f"services/{service}/metrics.py has not landed yet ({exc})")
    registry = CollectorRegistry()
    getattr(module, SERVICES[service])(registry)
    names = set()
    for family in registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        elif family.type == "summary":
            names |= {family.name, family.name + "_sum", family.name + "_count", family.name + "_created"}
        else:
            names.add(family.name)
    return names


@pytest.fixture(scope="module")
def manifests():
    return render_with_monitoring()


@pytest.fixture(scope="module")
def queries(manifests):
    return dashboard_queries() + alert_queries(manifests)


def _promtool(*args: str) -> subprocess.CompletedProcess:
    if not shutil.which(PROMTOOL):
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_promtool(manifests, tmp_path):
    groups = rule_groups(manifests)
    names = {r["alert"] for g in groups for r in g["rules"]}
    # What the issue asks the alerts to cover.
    for wanted in ("ConsumerLag", "Stale", "ErrorRatio", "LatencyP99", "NoModelLoaded", "OutboxBacklog"):
        assert any(wanted in n for n in names), wanted
    path = tmp_path / "streamrec.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    for group in groups:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_dashboard_queries_parse_with_promtool(tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 40
    # promtool parses expressions only inside rules: one recording rule per dashboard query.
    rules = [{"record": f"streamrec:dashboard_query:{i}", "expr": q.evaluable} for i, q in enumerate(queries)]
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_query_reads_only_exported_metrics(queries):
    exported = set().union(*(exported_names(s) for s in SERVICES))
    used = set()
    for query in queries:
        assert query.metrics, f"{query.source} reads no streamrec metric: {query.expr}"
        unknown = query.metrics - exported
        assert not unknown, f"{query.source} reads metrics no service exports: {sorted(unknown)}"
        used |= query.metrics
    # And the dashboards show every service.
    for service in SERVICES:
        assert any(m.startswith(f"streamrec_{service}_") for m in used), service


def test_every_histogram_quantile_reads_buckets_by_le(queries):
    for query in queries:
        if "histogram_quantile" in query.expr:
            assert "_bucket" in query.expr and "le" in query.expr, query.source


def test_alert_signals_drop_thresholds(manifests):
    for query in alert_queries(manifests):
        assert query.signals, query.source
        for signal in query.signals:
            assert metric_names(signal)
    assert split_top_level('sum(x{a=~"b>c"}) > 5 unless on (pod) y == 0') == ['sum(x{a=~"b>c"})', "5", "y", "0"]


def test_dashboards_are_grafana_json_with_a_datasource_variable():
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert [f.name for f in files] == ["streamrec-inference.json", "streamrec-ingest.json",
                                       "streamrec-registry.json", "streamrec-training.json"]
    uids = set()
    for path in files:
        doc = json.loads(path.read_text())
        uids.add(doc["uid"])
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in doc["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}", (path.name, panel["title"])
                assert panel["targets"], (path.name, panel["title"])
    assert len(uids) == 4
