"""Read the stack's progress from the services' own /metrics endpoints."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str, timeout_s: float = 10.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``{sample_name: [(labels, value), ...]}``; empty when the endpoint is down. A service busy on a loaded
    machine can take seconds to answer: a short timeout would read it as down."""
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


def scrape_with(url: str, name: str, deadline_s: float = 60.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """:func:`scrape`, retried until the page has samples of ``name``; RuntimeError naming ``url`` and ``name``
    after ``deadline_s``. For readings that must not be taken as zero when the service is slow to answer."""
    deadline = time.monotonic() + deadline_s
    while True:
        samples = scrape(url)
        if name in samples:
            return samples
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no {name} from {url} within {deadline_s:g} s")
        time.sleep(0.5)


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for lbl, v in samples.get(name, ()) if all(lbl.get(k) == val for k, val in labels.items()))


def maximum(samples: dict, name: str, **labels: str) -> float | None:
    values = [v for lbl, v in samples.get(name, ()) if all(lbl.get(k) == val for k, val in labels.items())]
    return max(values) if values else None
