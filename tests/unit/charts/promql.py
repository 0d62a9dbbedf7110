"""Every PromQL query the chart ships, for the tests and for an end-to-end check against Prometheus.

``chart_queries()`` renders the chart (monitoring on) and returns one ``Query`` per dashboard
target and per alert rule. ``Query.evaluable`` is the expression with Grafana variables filled in
(``$namespace`` -> ``.*``), ready for Prometheus' ``/api/v1/query``. For alert rules, whose
expressions compare against a threshold and are empty while all is well, ``Query.signals`` are the
operands of the top-level comparisons/set operators: each should return data from running services.

    from tests.unit.charts.promql import chart_queries
    for q in chart_queries():
        for expr in q.signals:
            ...  # GET /api/v1/query?query=expr, expect a non-empty result
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CHART_DIR = Path(__file__).resolve().parents[3] / "charts" / "streamrec"
DASHBOARD_DIR = CHART_DIR / "dashboards"

# Grafana template variables used in the dashboards, and what they mean for "everything".
DEFAULT_VARIABLES = {"namespace": ".*"}

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# Operators that split an alert expression into the series it compares (longest first).
_SPLIT_OPERATORS = (">=", "<=", "==", "!=", ">", "<", " unless ", " and ", " or ")


@dataclass(frozen=True)
class Query:
    source: str  # "dashboard:<file>#<panel title>/<refId>" or "alert:<group>/<name>"
    expr: str  # as written in the dashboard / rule
    variables: dict = field(default_factory=lambda: dict(DEFAULT_VARIABLES), compare=False)

    @property
    def evaluable(self) -> str:
        return substitute_variables(self.expr, self.variables)

    @property
    def signals(self) -> list[str]:
        """Sub-expressions that must return data when the services run (thresholds dropped)."""
        return [part for part in split_top_level(self.evaluable) if metric_names(part)]

    @property
    def metrics(self) -> set[str]:
        return metric_names(self.expr)


def substitute_variables(expr: str, variables: dict[str, str] | None = None) -> str:
    variables = DEFAULT_VARIABLES if variables is None else variables
    for name, value in variables.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """Names of the streamrec metrics an expression reads (string literals ignored)."""
    bare = _STRING.sub('""', expr)
    return {m.group(0) for m in _IDENT.finditer(bare) if m.group(0).startswith("streamrec_")}


def split_top_level(expr: str) -> list[str]:
    """Split at comparison and set operators outside parentheses, braces, brackets and strings.

    ``a > 5 unless b > 0`` -> ``["a", "5", "b", "0"]``; a bool modifier or on()/ignoring() after the
    operator stays with the right operand's text and is dropped by the caller's metric filter only
    when it has no metric.
    """
    parts, depth, start, i = [], 0, 0, 0
    text = expr
    while i < len(text):
        ch = text[i]
        if ch in "\"'`":
            end = _STRING.match(text, i)
            i = end.end() if end else len(text)
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            for op in _SPLIT_OPERATORS:
                if text.startswith(op, i) and not (op in ("=", ">", "<") and text[i + 1:i + 2] == "~"):
                    parts.append(text[start:i])
                    i += len(op)
                    start = i
                    break
            else:
                i += 1
                continue
            continue
        i += 1
    parts.append(text[start:])
    out = []
    for part in parts:
        part = part.strip()
        # Drop matching modifiers left at the start of a right operand: "on (pod) (x)" -> "(x)".
        part = re.sub(r"^(bool\s+)?((on|ignoring)\s*\([^)]*\)\s*)?((group_left|group_right)\s*(\([^)]*\))?\s*)?", "", part)
        if part:
            out.append(part)
    return out


def dashboard_queries(dashboard_dir: Path = DASHBOARD_DIR) -> list[Query]:
    queries = []
    for path in sorted(dashboard_dir.glob("*.json")):
        doc = json.loads(path.read_text())
        for panel in _panels(doc.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append(Query(f"dashboard:{path.name}#{panel.get('title')}/{target.get('refId')}",
                                         target["expr"]))
    return queries


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def rule_groups(manifests: list[dict]) -> list[dict]:
    """The ``groups`` of every PrometheusRule among rendered manifests (a Prometheus rules file)."""
    groups = []
    for doc in manifests:
        if doc.get("kind") == "PrometheusRule":
            groups.extend(doc["spec"]["groups"])
    return groups


def alert_queries(manifests: list[dict]) -> list[Query]:
    return [Query(f"alert:{g['name']}/{r.get('alert') or r.get('record')}", r["expr"])
            for g in rule_groups(manifests) for r in g["rules"]]


def render_with_monitoring(values: dict | None = None) -> list[dict]:
    """Render the chart with dashboards and alert rules on (the real Helm engine)."""
    import helm_python as helm

    merged = {"monitoring": {"prometheusRules": {"enabled": True}, "dashboards": {"enabled": True}}}
    if values:
        merged = _deep_merge(merged, values)
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(merged, name="streamrec", namespace="streamrec")
    docs = []
    for path, text in rendered.items():
        if path.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def chart_queries(values: dict | None = None) -> list[Query]:
    """Every dashboard and alert query of the chart as rendered with ``values``."""
    return dashboard_queries() + alert_queries(render_with_monitoring(values))


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


if __name__ == "__main__":  # print them: python -m tests.unit.charts.promql
    for q in chart_queries():
        print(json.dumps({"source": q.source, "expr": q.evaluable, "signals": q.signals}))
