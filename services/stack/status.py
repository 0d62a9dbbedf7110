"""Read the stack's progress from the services' own /metrics endpoints."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str, timeout_s: float = 1.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``{sample_name: [(labels, value), ...]}``; empty when the endpoint is down."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for lbl, v in samples.get(name, ()) if all(lbl.get(k) == val for k, val in labels.items()))


def maximum(samples: dict, name: str, **labels: str) -> float | None:
    values = [v for lbl, v in samples.get(name, ()) if all(lbl.get(k) == val for k, val in labels.items())]
    return max(values) if values else None
