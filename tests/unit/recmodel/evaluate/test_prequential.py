import numpy as np
import pytest

from recmodel.data import Event
from recmodel.evaluate import prequential_evaluate, prequential_evaluate_many


class CountingModel:
    """Scores an item by how often it has been trained on (plus a fixed tie-break): it learns only from
    ``train_events``, so a prediction made after training on its own event would be visibly better."""

    item_ids = ["a", "b", "c", "d"]
    base = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}

    def __init__(self):
        self.counts = dict.fromkeys(self.item_ids, 0)

    def score(self, histories, now_ms, item_ids):
        return np.array([[self.counts[i] + self.base[i] for i in item_ids] for _ in histories])

    def train_events(self, events):
        for e in events:
            self.counts[e.item_id] += 1


def ev(n, user, item, ts):
    return Event(f"e{n}", user, item, "click", 1.0, ts)


EVENTS = [ev(0, "u", "a", 1), ev(1, "v", "a", 2), ev(2, "u", "c", 3), ev(3, "v", "c", 4), ev(4, "u", "b", 5)]


def test_each_event_is_predicted_before_the_model_trains_on_it():
    r = prequential_evaluate(CountingModel(), EVENTS, k=1, window=1)
    # u->c: c was never trained on, b outranks it (a is seen) -> miss; v->c: trained once -> hit;
    # u->b: a and c are seen, b beats d -> hit. First events of a user have no history to predict from.
    assert r["predictions"] == 3
    assert r["hr@1"] == pytest.approx(2 / 3)
    assert r["seconds"] >= 0.0


def test_where_limits_the_predictions_but_every_event_still_trains_and_extends_histories():
    only_c = prequential_evaluate(CountingModel(), EVENTS, k=1, window=1, where=lambda e: e.item_id == "c")
    assert only_c["predictions"] == 2 and only_c["hr@1"] == pytest.approx(1 / 2)
    # u's last prediction excludes a and c (seen in events the filter skipped) and ranks b first.
    only_b = prequential_evaluate(CountingModel(), EVENTS, k=1, window=1, where=lambda e: e.item_id == "b")
    assert only_b["predictions"] == 1 and only_b["hr@1"] == 1.0
    none = prequential_evaluate(CountingModel(), EVENTS, k=1, window=1, where=lambda e: False)
    assert none["predictions"] == 0 and none["hr@1"] == 0.0


def test_candidates_restrict_the_ranking_to_a_set_of_items():
    # u->c loses to b among all items, but wins among {c, d}; b is not a candidate, so u->b is a miss.
    r = prequential_evaluate(CountingModel(), EVENTS, k=1, window=1, candidates={"c", "d"})
    assert r["predictions"] == 3
    assert r["hr@1"] == pytest.approx(2 / 3)
    only_c = prequential_evaluate(CountingModel(), EVENTS, k=1, window=1, where=lambda e: e.item_id == "c",
                                  candidates={"c", "d"})
    assert only_c["hr@1"] == 1.0


def test_several_views_of_one_pass_match_separate_passes():
    views = {"all": {}, "c": {"where": lambda e: e.item_id == "c"}, "cd": {"candidates": {"c", "d"}}}
    many = prequential_evaluate_many(CountingModel(), EVENTS, views, k=1, window=1)
    for name, view in views.items():
        alone = prequential_evaluate(CountingModel(), EVENTS, k=1, window=1, **view)
        assert {key: many[name][key] for key in ("hr@1", "ndcg@1", "predictions")} == \
            {key: alone[key] for key in ("hr@1", "ndcg@1", "predictions")}


def test_a_batch_can_ask_for_fewer_predictions_spread_over_it():
    from recmodel.evaluate.prequential import PrequentialEvaluator

    events = [ev(n, f"u{n % 4}", "abcd"[n % 3], n) for n in range(40)]  # 36 predictable (users seen before)
    evaluator = PrequentialEvaluator(ks=(1,), window=None, per_batch=30)
    evaluator.observe_and_test(CountingModel(), events)
    assert evaluator.metrics()["prequential_predictions"] == 30
    sampled = PrequentialEvaluator(ks=(1,), window=None, per_batch=30)
    ranked = []
    model = CountingModel()
    score = model.score
    model.score = lambda histories, now_ms, item_ids: (ranked.extend(now_ms), score(histories, now_ms, item_ids))[1]
    sampled.observe_and_test(model, events, per_batch=5)
    # One prediction every 40 // 5 = 8 events, not the first five (event 0 has no history to predict from).
    assert sampled.metrics()["prequential_predictions"] == 4 and ranked == [8, 16, 24, 32]
    # Histories still take every event: u1's history holds all ten of its events.
    assert len(sampled._hist["u1"]) == 10


class _Clock:
    """Stands in for the evaluator's ``time`` module: seconds pass only when the test says so."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_time_share_bounds_the_ranking_time_and_histories_still_take_every_event(monkeypatch):
    from recmodel.evaluate import prequential
    from recmodel.evaluate.prequential import PrequentialEvaluator

    clock = _Clock()
    monkeypatch.setattr(prequential, "time", clock)
    model = CountingModel()
    score = model.score

    def slow_score(histories, now_ms, item_ids):  # 2 ms of ranking per prediction
        clock.now += 0.002 * len(histories)
        return score(histories, now_ms, item_ids)

    model.score = slow_score
    bounded = PrequentialEvaluator(ks=(1,), window=None, per_batch=200, time_share=0.05)
    unbounded = PrequentialEvaluator(ks=(1,), window=None, per_batch=200)
    batches = [[ev(b * 200 + n, f"u{n % 50}", "abcd"[n % 4], b * 200 + n) for n in range(200)] for b in range(50)]
    per_batch = []
    for batch in batches:
        before = len(bounded.ranks)
        bounded.observe_and_test(model, batch)
        per_batch.append(len(bounded.ranks) - before)
        clock.now += 1.0  # training the batch
    first = 0.002 * 150  # the first batch measures the cost: its 150 predictable events (users seen before)
    assert per_batch[0] == 150
    # Ranking took 5 % of the time (the first batch's cost is paid back from later credit), ...
    assert abs(bounded.seconds - 0.05 * clock.now) <= first + 0.01, (bounded.seconds, clock.now)
    # ... spread evenly over the batches once the first is paid for: 1 s of training (and 5 % more of ranking)
    # buys 26 predictions.
    assert all(25 <= n <= 27 for n in per_batch[10:]), str(per_batch)
    for batch in batches:
        unbounded.observe_and_test(model, batch)
    assert unbounded.metrics()["prequential_predictions"] == 150 + 49 * 200
    # Every event still extends the histories: u7's holds its last 50 events (max_history).
    assert [h[0] for h in bounded._hist["u7"]] == [h[0] for h in unbounded._hist["u7"]]


def test_time_share_must_be_a_share():
    from recmodel.evaluate.prequential import PrequentialEvaluator

    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="time_share"):
            PrequentialEvaluator(time_share=bad)
