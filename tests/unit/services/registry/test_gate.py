"""The promotion gate's decisions, as an operator reads them in gate_reason."""

from services.registry.gate import PromotionGate


def test_first_version_is_promoted_when_there_is_no_production():
    d = PromotionGate().decide({"hr@10": 0.1}, None)
    assert d.promoted and "no production" in d.reason


def test_within_tolerance_or_better_is_promoted_and_worse_is_rejected_with_numbers():
    gate = PromotionGate("hr@10", tolerance=0.02)
    assert gate.decide({"hr@10": 0.29}, {"hr@10": 0.30}, 3).promoted
    assert gate.decide({"hr@10": 0.40}, {"hr@10": 0.30}, 3).promoted
    rejected = gate.decide({"hr@10": 0.20}, {"hr@10": 0.30}, 3)
    assert not rejected.promoted
    assert "0.2000" in rejected.reason and "v3" in rejected.reason and "0.3000" in rejected.reason


def test_lower_is_better_metrics_and_missing_metric():
    gate = PromotionGate("loss", tolerance=0.0, higher_is_better=False)
    assert gate.decide({"loss": 1.0}, {"loss": 1.5}).promoted
    assert not gate.decide({"loss": 2.0}, {"loss": 1.5}).promoted
    missing = gate.decide({"other": 1.0}, {"loss": 1.5})
    assert not missing.promoted and "loss" in missing.reason
