from bench.quality import _ratio, _Scorer
from recmodel.data.loaders import synthetic_dataset
from recmodel.evaluate import PopularityBaseline, TransitionBaseline, leave_last_out_split


def test_ratios_are_of_hit_counts_not_of_rounded_rates():
    # 84 and 42 hits of 610 users: HR 0.1377 and 0.0689 once rounded, a ratio of 1.9985 between those.
    assert _ratio({"hits": 84}, {"hits": 42}) == 2.0
    assert _ratio({"hits": 5}, {"hits": 0}) is None  # a baseline that never hits: no ratio, no division by zero


def test_every_result_counts_its_hits():
    dataset, _ = synthetic_dataset("seed=0,n_users=60,n_items=80")
    split = leave_last_out_split(dataset.events, seed=0)
    items = sorted({e.item_id for e in dataset.events})
    scorer = _Scorer(split, items, k=10, stage="validation")
    for model in (PopularityBaseline().fit(split.train), TransitionBaseline(span=3, backward=0.5).fit(split.train)):
        r = scorer.evaluate(model)
        assert r["users"] == len(split.validation) and r["hits"] == round(r["hr@10"] * r["users"])
    assert scorer.evaluate(TransitionBaseline(span=3, backward=0.5).fit(split.train))["hits"] > 0
