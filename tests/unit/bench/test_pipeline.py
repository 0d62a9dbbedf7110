"""`bench pipeline`'s verdict on one step: which stages kept up, and whether the rate was sustained."""

from __future__ import annotations

from bench.pipeline import judge_step


def _readings(**stages):
    return {name: {"done": done, "lag": lag} for name, (done, lag) in stages.items()}


def test_a_step_is_sustained_when_every_stage_ends_within_its_lag_budget():
    before = _readings(ingester=(0, 0), trainer=(0, 0), history=(0, 0))
    after = _readings(ingester=(60_000, 900), trainer=(55_000, 4_000), history=(60_000, 10))
    step = judge_step(1000, 998.0, before, after, elapsed=60.0, max_lag_s=10.0)
    assert step["sustained"]
    assert step["stages"]["trainer"] == {"events_per_s": 916.7, "lag_at_start": 0, "lag": 4000, "keeps_up": True}


def test_a_stage_reports_its_other_counters_per_second():
    before = {"trainer": {"done": 0, "lag": 0, "users_shed": 1_000}}
    after = {"trainer": {"done": 60_000, "lag": 0, "users_shed": 31_000}}
    step = judge_step(1000, 1000.0, before, after, elapsed=60.0, max_lag_s=10.0)
    assert step["stages"]["trainer"]["users_shed_per_s"] == 500.0 and step["sustained"]


def test_a_stage_whose_lag_outgrows_the_budget_fails_the_step():
    before = _readings(ingester=(0, 0), trainer=(0, 0), history=(0, 0))
    after = _readings(ingester=(60_000, 0), trainer=(30_000, 30_000), history=(60_000, 0))
    step = judge_step(1000, 1000.0, before, after, elapsed=60.0, max_lag_s=10.0)
    assert not step["sustained"]
    assert [n for n, s in step["stages"].items() if not s["keeps_up"]] == ["trainer"]


def test_a_stage_draining_a_backlog_keeps_up_and_a_short_publisher_fails_the_step():
    before = _readings(ingester=(0, 0), trainer=(0, 50_000), history=(0, 0))
    after = _readings(ingester=(30_000, 0), trainer=(40_000, 20_000), history=(30_000, 0))
    assert judge_step(500, 500.0, before, after, elapsed=60.0, max_lag_s=10.0)["sustained"]
    assert not judge_step(1000, 500.0, before, after, elapsed=60.0, max_lag_s=10.0)["sustained"]
