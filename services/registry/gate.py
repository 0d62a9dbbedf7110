"""The promotion gate: may a new version replace `production` automatically?"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

PROMOTED = "promoted"
REJECTED = "rejected"


@dataclass(frozen=True)
class GateDecision:
    decision: str  # PROMOTED | REJECTED
    reason: str

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED


class PromotionGate:
    """Promote when the candidate's ``metric`` is within ``tolerance`` of production's, or better.

    ``tolerance`` is absolute in the metric's units (0.01 on hr@10 = one point of hit rate).
    """

    def __init__(self, metric: str = "hr@10", tolerance: float = 0.01, higher_is_better: bool = True,
                 promote_first: bool = True) -> None:
        self.metric = metric
        self.tolerance = tolerance
        self.higher_is_better = higher_is_better
        self.promote_first = promote_first

    def decide(self, candidate: Mapping[str, float], production: Mapping[str, float] | None,
               production_version: int = 0) -> GateDecision:
        if production is None:
            if self.promote_first:
                return GateDecision(PROMOTED, "no production version yet")
            return GateDecision(REJECTED, "no production version yet and promote_first is off")
        new = candidate.get(self.metric)
        if new is None or not math.isfinite(new):
            return GateDecision(REJECTED, f"candidate has no finite metric {self.metric!r}")
        old = production.get(self.metric)
        if old is None or not math.isfinite(old):
            return GateDecision(PROMOTED, f"production v{production_version} has no metric {self.metric!r} to compare")
        delta = new - old if self.higher_is_better else old - new
        comparison = f"{self.metric} {new:.4f} vs production v{production_version} {old:.4f}"
        if delta >= -self.tolerance:
            return GateDecision(PROMOTED, f"{comparison} (within tolerance {self.tolerance:g})")
        return GateDecision(REJECTED, f"{comparison}: worse by {-delta:.4f}, more than tolerance {self.tolerance:g}")
