"""The promotion gate's decisions on paired evidence, as an operator reads them in gate_reason."""

from services.registry.gate import HELD, PROMOTED, REJECTED, PairedEvidence, PromotionGate
from tests.unit.services.registry.builders import paired_evidence


def test_first_version_is_promoted_when_there_is_no_production():
    d = PromotionGate().decide({"hr@10": 0.1}, None)
    assert d.promoted and "no production" in d.reason
    assert PromotionGate(promote_first=False).decide({}, None).decision == HELD


def test_worse_beyond_noise_is_rejected_with_both_scores_n_and_the_bound():
    gate = PromotionGate(tolerance=0.01, min_events=100)
    evidence = paired_evidence(3, candidate=0.12, production=0.21, n=800, lower=-0.12, upper=-0.06)
    d = gate.decide(evidence, 3, production_age_s=10)
    assert d.decision == REJECTED
    for text in ("0.1200", "v3", "0.2100", "800", "-0.1200", "-0.0600", "-0.0100"):
        assert text in d.reason, text
    # Staleness never lets a candidate that is worse beyond noise through.
    assert gate.decide(evidence, 3, production_age_s=10_000).decision == REJECTED
    # Nor do few events: the bound is exact, and 40 events were enough to show it.
    few = gate.decide(paired_evidence(3, 0.025, 0.275, n=40, lower=-0.30, upper=-0.07), 3, production_age_s=10_000)
    assert few.decision == REJECTED and "40 holdout events" in few.reason


def test_not_worse_beyond_noise_is_promoted_even_when_its_score_is_lower():
    gate = PromotionGate(tolerance=0.01, min_events=100)
    # Lower point estimate, but the interval reaches above -tolerance: noise, not evidence.
    d = gate.decide(paired_evidence(3, candidate=0.20, production=0.21, n=500, lower=-0.04, upper=0.02), 3)
    assert d.decision == PROMOTED and "not worse" in d.reason and "500" in d.reason
    # Worse, but by less than the tolerance.
    assert gate.decide(paired_evidence(3, 0.205, 0.21, n=5000, lower=-0.008, upper=-0.002), 3).promoted
    assert gate.decide(paired_evidence(3, 0.30, 0.21, n=500, lower=0.05, upper=0.13), 3).promoted


def test_missing_small_or_mismatched_evidence_holds_until_production_is_stale():
    gate = PromotionGate(min_events=100, stale_after_s=120)
    cases = {
        "no paired evidence": {"hr@10": 0.3},
        "about v2 but production is v3": paired_evidence(2, 0.3, 0.2, n=900, lower=0.05, upper=0.15),
        # Few events whose interval straddles zero: not enough to call it "not worse".
        "too few holdout events": paired_evidence(3, 0.3, 0.2, n=40, lower=-0.1, upper=0.3),
    }
    for words, metrics in cases.items():
        held = gate.decide(metrics, 3, production_age_s=119)
        assert held.decision == HELD and words in held.reason and "119s old" in held.reason, held.reason
        stale = gate.decide(metrics, 3, production_age_s=121)
        assert stale.decision == PROMOTED and "staleness bound 120s" in stale.reason and words in stale.reason
    # Evidence that exists is quoted even when it cannot decide.
    assert "0.3000" in gate.decide(cases["too few holdout events"], 3, 0).reason


def test_evidence_is_read_from_gate_metrics_and_incomplete_sets_are_no_evidence():
    metrics = paired_evidence(4, 0.3, 0.25, n=600, lower=0.01, upper=0.09)
    e = PairedEvidence.from_metrics(metrics)
    assert (e.production_version, e.n, e.candidate, e.production, e.lower, e.upper) == (4, 600, 0.3, 0.25, 0.01, 0.09)
    del metrics["gate.diff_upper"]
    assert PairedEvidence.from_metrics(metrics) is None
    assert PairedEvidence.from_metrics({**paired_evidence(4, 0.3, 0.2), "gate.n": float("nan")}) is None
