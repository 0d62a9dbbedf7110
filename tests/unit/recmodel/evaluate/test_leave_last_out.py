import math

import numpy as np
import pytest

from recmodel.data import Event
from recmodel.evaluate import (
    ItemKNNBaseline,
    PopularityBaseline,
    evaluate_leave_last_out,
    hit_rate,
    leave_last_out_ranks,
    leave_last_out_split,
    ndcg,
    target_rank,
)


def ev(n, user, item, ts):
    return Event(f"e{n}", user, item, "click", 1.0, ts)


def test_split_takes_last_as_test_and_previous_as_validation():
    events = [ev(1, "a", "x", 30), ev(2, "a", "y", 10), ev(3, "a", "z", 20), ev(4, "b", "x", 5), ev(5, "b", "y", 6),
              ev(6, "a", "w", 40)]
    split = leave_last_out_split(events)
    assert split.test["a"].item_id == "w" and split.validation["a"].item_id == "x"
    assert [e.item_id for e in split.user_train["a"]] == ["y", "z"]
    assert "b" not in split.test  # fewer than 3 events: training only
    assert [e.event_id for e in split.train] == ["e4", "e5", "e2", "e3"]


def test_equal_timestamps_are_ordered_by_a_fixed_seed_not_file_order():
    events = [ev(n, "u", f"i{n}", 100) for n in range(8)]
    splits = [leave_last_out_split(events, seed=s) for s in range(6)]
    tests = {s.test["u"].item_id for s in splits}
    assert len(tests) > 1  # not always the last line of the file
    again = leave_last_out_split(events, seed=2)
    assert again.test["u"] == splits[2].test["u"] and again.validation["u"] == splits[2].validation["u"]
    for s in splits:
        assert {e.item_id for e in s.user_train["u"]} | {s.test["u"].item_id, s.validation["u"].item_id} == {f"i{n}" for n in range(8)}


class FixedScores:
    def __init__(self, table):
        self.table = table

    def score(self, histories, now_ms, item_ids):
        return np.array([[self.table.get(i, 0.0) for i in item_ids] for _ in histories])


def test_ranks_only_among_items_the_user_has_not_seen():
    events = [ev(1, "u", "a", 1), ev(2, "u", "b", 2), ev(3, "u", "c", 3)]  # train a, validation b, test c
    split = leave_last_out_split(events)
    items = ["a", "b", "c", "d", "e"]
    model = FixedScores({"a": 9, "b": 8, "d": 7, "c": 6, "e": 1})
    assert leave_last_out_ranks(model, split, items)["u"] == 1  # only d beats c; a, b were seen
    assert leave_last_out_ranks(model, split, items, stage="validation")["u"] == 0  # b vs unseen c, d, e


def test_hit_rate_and_ndcg_on_hand_computed_ranks():
    ranks = [0, 1, 4, 10, math.inf]
    assert hit_rate(ranks, 10) == pytest.approx(3 / 5)
    assert ndcg(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert hit_rate([], 10) == 0.0


def test_ties_count_half_so_constant_scores_earn_no_free_hits():
    scores = np.zeros(21)
    assert target_rank(scores, 3) == 10.0
    assert target_rank(np.array([3.0, 1.0, 3.0, 2.0]), 0) == 0.5
    assert target_rank(np.array([-np.inf, 1.0]), 0) == math.inf


def test_evaluate_reports_hr_and_ndcg_per_user_subset():
    events = [ev(n, u, i, t) for n, (u, i, t) in enumerate(
        [("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("v", "a", 1), ("v", "c", 2), ("v", "e", 3)])]
    split = leave_last_out_split(events)
    model = FixedScores({"c": 5, "e": 4, "d": 3, "b": 2, "a": 1})
    result = evaluate_leave_last_out(model, split, ["a", "b", "c", "d", "e"], k=1)
    # u: test c (seen a, b) -> rank 0; v: test e (seen a, c) -> rank 0
    assert result == {"hr@1": 1.0, "ndcg@1": 1.0, "users": 2}
    only_v = evaluate_leave_last_out(model, split, ["a", "b", "c", "d", "e"], k=1, users=lambda u, e: u == "v")
    assert only_v["users"] == 1


def test_popularity_and_item_knn_baselines():
    train = [ev(n, u, i, n) for n, (u, i) in enumerate(
        [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "a"), ("u3", "c"), ("u4", "d")])]
    pop = PopularityBaseline().fit(train)
    assert pop.score([[]], [0], ["a", "b", "c", "zz"]).tolist() == [[3.0, 2.0, 1.0, 0.0]]
    knn = ItemKNNBaseline(neighbors=2, shrink=0.0).fit(train)
    scores = knn.score([[("b", "click", 0)]], [0], ["a", "c", "d", "zz"])[0]
    assert scores[0] > scores[1] == scores[2] == scores[3] == 0.0  # a co-occurs with b; c, d never do
