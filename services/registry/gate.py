"""The promotion gate: may a new version replace `production` automatically?

The gate judges paired evidence, never numbers measured on different data. The trainer scores the
candidate and the current production version on the same recent holdout events (interactions no
model trains on) and registers the result as metrics:

    gate.production_version  the production version it compared with
    gate.n                   paired holdout events
    gate.candidate_<metric>, gate.production_<metric>   both hit rates on those events
    gate.diff_lower, gate.diff_upper                      confidence bound on candidate - production
    gate.confidence                                       its level

Rules, in order:

* no production version: promote (unless ``promote_first`` is off);
* evidence about the current production version that the candidate is worse beyond noise
  (``diff_upper < -tolerance``): reject, whatever ``n`` (the bound is exact for any n, so few events
  only make it harder to reach);
* evidence about the current production version on ``n >= min_events`` events, not worse beyond
  noise: promote (``min_events`` keeps a handful of events, whose interval always straddles zero, from
  passing for "not worse");
* no usable evidence (missing, about another production version, too few events): hold (the version
  stays `candidate`), unless production is older than ``stale_after_s``: then promote, so production
  never stays behind the stream because evidence was unavailable.

A held version may still be promoted later by ``ModelRegistry.promote_stale`` once production has
become stale. Every reason carries the evidence (both scores, n, bound) when there is any.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Callable, Mapping

logger = logging.getLogger(__name__)

PROMOTED = "promoted"
REJECTED = "rejected"
HELD = "held"

PREFIX = "gate."


@dataclass(frozen=True)
class GateDecision:
    decision: str  # PROMOTED | REJECTED | HELD
    reason: str

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED


@dataclass(frozen=True)
class PairedEvidence:
    """What the trainer measured: candidate and production on the same holdout events."""

    production_version: int
    n: int
    candidate: float
    production: float
    lower: float
    upper: float
    confidence: float

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], metric: str = "hr@10") -> "PairedEvidence | None":
        keys = ("production_version", "n", f"candidate_{metric}", f"production_{metric}", "diff_lower", "diff_upper")
        values = [metrics.get(PREFIX + k) for k in keys]
        if any(v is None or not math.isfinite(v) for v in values):
            return None
        version, n, cand, prod, lower, upper = values
        confidence = metrics.get(PREFIX + "confidence", 0.95)
        return cls(int(version), int(n), cand, prod, lower, upper, confidence)

    def describe(self, metric: str) -> str:
        return (f"{metric} {self.candidate:.4f} vs production v{self.production_version} {self.production:.4f} "
                f"on the same {self.n} holdout events, candidate - production in "
                f"[{self.lower:+.4f}, {self.upper:+.4f}] ({self.confidence:.0%})")


class PromotionGate:
    """Decides on paired evidence; see the module docstring for the rules."""

    def __init__(self, metric: str = "hr@10", tolerance: float = 0.01, min_events: int = 200,
                 stale_after_s: float = 120.0, promote_first: bool = True) -> None:
        self.metric = metric
        self.tolerance = tolerance
        self.min_events = min_events
        self.stale_after_s = stale_after_s
        self.promote_first = promote_first

    def decide(self, candidate: Mapping[str, float], production_version: int | None,
               production_age_s: float = 0.0) -> GateDecision:
        """``production_age_s``: seconds since the production version was registered."""
        if not production_version:
            if self.promote_first:
                return GateDecision(PROMOTED, "no production version yet")
            return GateDecision(HELD, "no production version yet and promote_first is off")
        evidence = PairedEvidence.from_metrics(candidate, self.metric)
        if evidence is None:
            problem = f"no paired evidence (gate.* metrics) against production v{production_version}"
        elif evidence.production_version != production_version:
            problem = (f"evidence is about v{evidence.production_version} but production is v{production_version} "
                       f"({evidence.describe(self.metric)})")
        elif evidence.upper < -self.tolerance:
            return GateDecision(REJECTED, f"worse beyond noise: {evidence.describe(self.metric)}, "
                                          f"reject below {-self.tolerance:+.4f}")
        elif evidence.n < self.min_events:
            problem = f"too few holdout events ({evidence.describe(self.metric)}; need {self.min_events})"
        else:
            return GateDecision(PROMOTED, f"not worse beyond noise: {evidence.describe(self.metric)}, "
                                          f"reject below {-self.tolerance:+.4f}")
        age = f"production v{production_version} is {production_age_s:.0f}s old"
        if production_age_s >= self.stale_after_s:
            return GateDecision(PROMOTED, f"{age}, over the staleness bound {self.stale_after_s:g}s; {problem}")
        return GateDecision(HELD, f"{problem}; {age}, promoted anyway after {self.stale_after_s:g}s")


class StalenessSweeper:
    """Runs ``sweep()`` every ``interval_s`` on a thread: promotes held versions once production is stale
    and refreshes the staleness gauge (a registration alone would leave both waiting for the next upload)."""

    def __init__(self, sweep: Callable[[], object], interval_s: float = 5.0) -> None:
        self._sweep = sweep
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="staleness-sweeper", daemon=True)

    def start(self) -> "StalenessSweeper":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sweep()
            except Exception:  # noqa: BLE001 - the database may be briefly unavailable; try again next time
                logger.warning("staleness sweep failed; will retry", exc_info=True)
