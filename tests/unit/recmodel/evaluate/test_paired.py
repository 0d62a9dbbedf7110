"""The paired comparison behind the promotion gate: exact bounds on candidate - production hit rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recmodel.evaluate.paired import clopper_pearson, hits_at_k, paired_difference, sign_test


def _binomial_pmf(k: int, n: int, p: float) -> float:
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


def test_clopper_pearson_matches_closed_forms_and_the_defining_tails():
    # No successes: the upper bound solves (1 - p)^n = alpha / 2; all successes mirror it.
    lo, hi = clopper_pearson(0, 10, 0.95)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12)
    lo, hi = clopper_pearson(10, 10, 0.95)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10), abs=1e-12)
    # In between: each bound leaves exactly alpha/2 in its tail (checked by brute-force summation).
    lo, hi = clopper_pearson(7, 20, 0.9)
    assert sum(_binomial_pmf(k, 20, lo) for k in range(7, 21)) == pytest.approx(0.05, abs=1e-9)
    assert sum(_binomial_pmf(k, 20, hi) for k in range(0, 8)) == pytest.approx(0.05, abs=1e-9)
    assert lo < 7 / 20 < hi


def test_sign_test_is_the_exact_two_sided_binomial_test():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 5) == 1.0
    assert sign_test(0, 10) == pytest.approx(2 * 0.5**10)
    assert sign_test(2, 8) == pytest.approx(2 * sum(math.comb(10, k) for k in range(3)) / 2**10)


def test_paired_difference_counts_discordant_events_and_bounds_the_difference():
    # 1000 events: both hit 200, only the candidate 90, only production 30, both miss the rest.
    cand = [True] * 200 + [True] * 90 + [False] * 30 + [False] * 680
    prod = [True] * 200 + [False] * 90 + [True] * 30 + [False] * 680
    r = paired_difference(cand, prod, 0.95)
    assert (r.n, r.candidate_hits, r.production_hits, r.candidate_only, r.production_only) == (1000, 290, 230, 90, 30)
    assert r.candidate_rate == pytest.approx(0.29) and r.production_rate == pytest.approx(0.23)
    assert r.difference == pytest.approx(0.06)
    assert 0.0 < r.lower < 0.06 < r.upper < 0.12
    assert r.p_value < 1e-4
    # The same evidence the other way round mirrors the interval.
    flipped = paired_difference(prod, cand, 0.95)
    assert flipped.lower == pytest.approx(-r.upper) and flipped.upper == pytest.approx(-r.lower)
    # A higher confidence widens it.
    wider = paired_difference(cand, prod, 0.999)
    assert wider.lower < r.lower and wider.upper > r.upper


def test_identical_outcomes_give_a_zero_width_interval_and_no_evidence_of_a_difference():
    hits = [True, False, True, True]
    r = paired_difference(hits, hits)
    assert (r.lower, r.upper, r.p_value) == (0.0, 0.0, 1.0)
    empty = paired_difference([], [])
    assert (empty.n, empty.lower, empty.upper, empty.candidate_rate) == (0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="length"):
        paired_difference([True], [True, False])


def test_interval_covers_the_true_difference_at_about_the_stated_rate():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(300):
        # True rates: candidate 0.30, production 0.25, correlated through a shared "easy event" draw.
        easy = rng.random(400) < 0.2
        cand = easy | (rng.random(400) < 0.125)
        prod = easy | (rng.random(400) < 0.0625)
        true = (1 - 0.8 * 0.875) - (1 - 0.8 * 0.9375)
        r = paired_difference(cand, prod, 0.9)
        covered += r.lower <= true <= r.upper
    assert covered / 300 >= 0.85


class _TableModel:
    """Scores = user taste vector . item vector; the history picks the taste (its last item's vector)."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def score(self, histories, now_ms, item_ids):
        users = np.stack([self.vectors[h[-1][0]] for h in histories])
        items = np.stack([self.vectors.get(i, np.zeros(2)) for i in item_ids])
        out = users @ items.T
        known = np.array([i in self.vectors for i in item_ids])
        out[:, ~known] = -np.inf
        return out


def test_hits_at_k_excludes_seen_items_but_not_a_reconsumed_target_and_misses_unknown_targets():
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.9, 0.1]), "c": np.array([0.0, 1.0]),
               "d": np.array([0.8, 0.0])}
    model = _TableModel(vectors)
    catalogue = ["a", "b", "c", "d"]
    histories = [
        [("a", "click", 1)],  # b ranks first among unseen items {b, c, d}
        [("b", "click", 1), ("a", "click", 2)],  # b was seen: excluded, so d is the top unseen item
        [("a", "click", 1)],  # target a is the user's own (re-consumed) item: still rankable, ranks first
        [("a", "click", 1)],  # target z is not in the catalogue: a miss
    ]
    hits = hits_at_k(model, histories, [10] * 4, ["b", "d", "a", "z"], catalogue, k=1)
    assert hits.tolist() == [True, True, True, False]
    assert hits_at_k(model, histories[:1], [10], ["c"], catalogue, k=1).tolist() == [False]
    assert hits_at_k(model, histories[:1], [10], ["c"], catalogue, k=3).tolist() == [True]


class _RecordingModel:
    """Random item vectors; records how many scores each call returns."""

    def __init__(self, n_items: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.ids = [f"i{j}" for j in range(n_items)]
        self.vectors = rng.standard_normal((n_items, 8)).astype(np.float32)
        self.row = {i: j for j, i in enumerate(self.ids)}
        self.calls: list[tuple[int, int]] = []

    def score(self, histories, now_ms, item_ids):
        users = np.stack([self.vectors[self.row[h[-1][0]]] for h in histories])
        out = users @ self.vectors[[self.row[i] for i in item_ids]].T
        self.calls.append(out.shape)
        return out


def test_hits_at_k_holds_a_bounded_number_of_scores_at_once_and_ranks_the_same(monkeypatch):
    import recmodel.evaluate.paired as paired

    model = _RecordingModel(5_000)
    rng = np.random.default_rng(1)
    n = 300
    histories = [[(model.ids[j], "click", 1)] for j in rng.integers(0, 5_000, n)]
    targets = [model.ids[j] for j in rng.integers(0, 5_000, n)]
    unbounded = hits_at_k(model, histories, [10] * n, targets, model.ids, k=200)
    assert max(b for b, _ in model.calls) == 256, "without a limit, batches of 256 queries"
    model.calls.clear()
    monkeypatch.setattr(paired, "SCORE_BUDGET", 40_000)  # 8 queries over 5,000 items
    bounded = hits_at_k(model, histories, [10] * n, targets, model.ids, k=200)
    assert model.calls and all(b * items <= 40_000 for b, items in model.calls)
    assert sum(b for b, _ in model.calls) == n
    assert bounded.tolist() == unbounded.tolist() and 0 < bounded.sum() < n
    model.calls.clear()
    monkeypatch.setattr(paired, "SCORE_BUDGET", 10)  # a catalogue larger than the budget: one query at a time
    assert hits_at_k(model, histories[:5], [10] * 5, targets[:5], model.ids, k=200).tolist() == unbounded[:5].tolist()
    assert [b for b, _ in model.calls] == [1] * 5
