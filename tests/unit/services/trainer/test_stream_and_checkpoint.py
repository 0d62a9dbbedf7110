"""Decoding of `events`/`items` records, checkpoint round trips, prequential metrics, config rules."""

from __future__ import annotations

import pytest

from recmodel.data import Event, Item, SyntheticStream
from recmodel.text import HashingTextEncoder
from recmodel.train import IncrementalTrainer
from services.common.config import load_config
from services.common.errors import ConfigError
from services.trainer.checkpoint_store import CheckpointStore, Registration, StreamPosition
from services.trainer.config import TrainerConfig
from recmodel.evaluate.prequential import PrequentialEvaluator
from services.trainer.stream import decode_event, decode_item
from streamrec_proto.v1 import event_pb2


def test_decode_event_and_item():
    msg = event_pb2.Event(event_id="e1", user_id="u1", item_id="i1", type="click", value=1.0,
                          timestamp_ms=123, context={"page": "home"})
    e = decode_event(msg.SerializeToString())
    assert e == Event("e1", "u1", "i1", "click", 1.0, 123, {"page": "home"})
    assert decode_event(b"\xff\xff garbage") is None
    assert decode_event(event_pb2.Event(event_id="e2", item_id="i1", type="view").SerializeToString()) is None
    item = event_pb2.Item(item_id="i1", title="T", text="x", categories=["a", "b"])
    assert decode_item(item.SerializeToString()) == Item("i1", "T", "x", ("a", "b"), {}, True)
    item.available = False
    assert decode_item(item.SerializeToString()).available is False
    assert decode_item(None) is None  # tombstone


def test_checkpoint_round_trip_keeps_offsets_with_the_state(tmp_path):
    stream = SyntheticStream(seed=1, n_users=30, n_items=60, n_events=600)
    trainer = IncrementalTrainer(dim=16, max_len=8, capacity=200, text_encoder=HashingTextEncoder(16),
                                 device="cpu", batch_size=64, replay_batch=8, n_random_negatives=16)
    trainer.upsert_items(stream.items())
    trainer.train_events(list(stream.events())[:300])
    store = CheckpointStore(tmp_path)
    pos = StreamPosition(events_topic="ev", items_topic="it", events_offsets={0: 120, 1: 180},
                         items_offsets={0: 60}, records_consumed=300, newest_event_ms=99, epoch=3)
    store.save(trainer, pos)
    restored, pos2 = store.load(text_encoder=HashingTextEncoder(16), device="cpu")
    assert pos2 == pos
    assert restored.events_trained == 300
    assert restored.user_histories() == trainer.user_histories()
    assert store.load_registration() is None
    store.save_registration(Registration(4, {0: 120, 1: 180}, 300))
    assert store.load_registration() == Registration(4, {0: 120, 1: 180}, 300)


def _prequential(stream, train: bool) -> dict:
    events = list(stream.events())
    trainer = IncrementalTrainer(dim=32, max_len=10, capacity=400, text_encoder=HashingTextEncoder(32),
                                 device="cpu", batch_size=128, replay_batch=32, n_random_negatives=64)
    trainer.upsert_items(stream.items())
    monitor = PrequentialEvaluator(window=1000, ks=(10, 50), per_batch=100)
    for lo in range(0, len(events), 250):
        monitor.observe_and_test(trainer, events[lo:lo + 250])  # test first ...
        if train:
            trainer.train_events(events[lo:lo + 250])  # ... then train
    return monitor.metrics()


def test_prequential_monitor_scores_before_training():
    stream = SyntheticStream(seed=2, n_users=60, n_items=200, n_categories=8, n_events=4000)
    m = _prequential(stream, train=True)
    assert 0 < m["prequential_predictions"] <= 1000
    assert 0.0 <= m["hr@10"] <= m["hr@50"] <= 1.0
    # What the metric is for: it sees learning. The same stream scored by a model that never trains
    # (text tower and random weights only) does far worse.
    untrained = _prequential(stream, train=False)
    assert m["hr@10"] > 2 * untrained["hr@10"]
    assert m["hr@50"] > untrained["hr@50"] + 0.1


def test_config_defaults_and_leader_timing_rules():
    cfg = load_config(TrainerConfig, environ={})
    assert cfg.metrics.port == 9104 and cfg.trainer.export_interval_s == 30
    assert not cfg.trainer.leader_election.enabled and not cfg.trainer.distributed.enabled
    env = {"STREAMREC_TRAINER_LEADER_ELECTION_RENEW_DEADLINE_S": "20"}
    with pytest.raises(ConfigError, match="renew_deadline_s"):
        load_config(TrainerConfig, environ=env)
    with pytest.raises(ConfigError, match="trainer.bogus"):
        load_config(TrainerConfig, environ={}, overrides={"trainer": {"bogus": 1}})
    assert cfg.trainer.publish_mode == "auto"
    assert load_config(TrainerConfig, environ={"STREAMREC_TRAINER_PUBLISH_MODE": "background"}).trainer.publish_mode == "background"
    with pytest.raises(ConfigError, match="publish_mode"):
        load_config(TrainerConfig, environ={"STREAMREC_TRAINER_PUBLISH_MODE": "sometimes"})
    assert cfg.trainer.catch_up_publish_share == 0.1
    assert cfg.trainer.eval_time_share == 0.05
    for bad in ("0", "1.5", "-0.1", "some"):
        with pytest.raises(ConfigError, match="eval_time_share"):
            load_config(TrainerConfig, environ={"STREAMREC_TRAINER_EVAL_TIME_SHARE": bad})
    for bad in ("0", "1.5", "-0.1", "most"):
        with pytest.raises(ConfigError, match="catch_up_publish_share"):
            load_config(TrainerConfig, environ={"STREAMREC_TRAINER_CATCH_UP_PUBLISH_SHARE": bad})
    assert (cfg.trainer.catch_up_max_users, cfg.trainer.catch_up_eval_per_batch) == (64, 32)
    assert load_config(TrainerConfig, environ={"STREAMREC_TRAINER_CATCH_UP_MAX_USERS": "0"}).trainer.catch_up_max_users == 0
    for key, bad in (("CATCH_UP_MAX_USERS", "-1"), ("CATCH_UP_MAX_USERS", "many"), ("CATCH_UP_EVAL_PER_BATCH", "-5"),
                     ("EVAL_PER_BATCH", "0")):
        with pytest.raises(ConfigError, match=key.lower()):
            load_config(TrainerConfig, environ={f"STREAMREC_TRAINER_{key}": bad})


def test_a_trainer_further_behind_trains_fewer_users_per_step_down_to_a_floor():
    from services.trainer.service import CATCH_UP_MIN_USERS, catch_up_users

    assert catch_up_users(64, 4000, 4001) == 63 and catch_up_users(64, 4000, 8000) == 32
    assert catch_up_users(64, 4000, 16_000) == 16 and catch_up_users(64, 4000, 10**7) == CATCH_UP_MIN_USERS == 8
    assert catch_up_users(64, 4000, 100) == 64  # never more than asked for
    assert catch_up_users(4, 4000, 10**7) == 4  # a bound below the floor is kept
    assert catch_up_users(0, 4000, 10**7) is None  # 0: no bound


def test_steps_are_bounded_while_the_stream_arrives_faster_than_every_user_trains():
    from services.trainer.service import CatchUpPace

    # A backlog and nothing arriving (a restart, a backfill): trained in full however far behind.
    backfill = CatchUpPace()
    assert [backfill.update(t * 2.0, 1000 * t, 100_000 - 1000 * t, behind=True) for t in range(5)] == [False] * 5
    assert backfill.full_rate == 500.0 and backfill.arrival_rate == 0.0

    # 5,000 records/s arrive; trained in full, 1,000/s are consumed: bounded from then on.
    pace = CatchUpPace()
    assert not pace.update(0.0, 0, 5000, behind=True)  # nothing measured yet: train in full
    assert pace.update(2.0, 2000, 13_000, behind=True)  # end 15,000: 5,000/s arrive, 1,000/s consumed
    assert pace.full_rate == 1000.0 and pace.arrival_rate == 5000.0
    assert pace.update(4.0, 14_000, 11_000, behind=True)  # bounded: 6,000/s consumed, but full training is 1,000/s
    assert pace.full_rate == 1000.0
    # Caught up, with the stream still arriving at 5,000/s: still bounded (training every user, the trainer
    # would be behind again within a step).
    assert pace.update(6.0, 34_600, 400, behind=False) and pace.arrival_rate == 5000.0
    # The stream slows to 500/s, below what full training consumes: every user again, behind or not.
    assert not pace.update(8.0, 35_000, 1_000, behind=True)
    assert not pace.update(10.0, 36_000, 0, behind=False)
    assert pace.full_rate == 1000.0
    # A position restored from an older checkpoint (consumed goes back) is not read as a rate.
    assert not pace.update(12.0, 20_000, 16_000, behind=True) and pace.full_rate == 1000.0


def test_a_full_training_rate_is_used_for_a_minute_then_measured_again():
    """A rate measured in a busy moment (here 300/s, as at a stack's start) bounds the spells behind the stream
    that follow for FULL_RATE_MAX_AGE_S only: then the trainer trains every user until it has measured again."""
    from services.trainer.service import FULL_RATE_MAX_AGE_S, CatchUpPace

    assert FULL_RATE_MAX_AGE_S == 60.0
    pace = CatchUpPace()
    assert not pace.update(0.0, 0, 2_000, behind=True)
    assert pace.update(2.0, 600, 3_400, behind=True)  # 1,000/s arrive, 300/s consumed training everyone
    assert not pace.update(4.0, 4_000, 0, behind=False)  # caught up on a pause of the stream (nothing arrived)
    assert pace.update(30.0, 29_000, 3_000, behind=True)  # behind again within the minute: bounded at once
    assert pace.full_rate == 300.0
    # Past the minute: unbounded, and the next interval behind measures the rate again (1,200/s: keeps up).
    assert not pace.update(63.0, 61_000, 4_000, behind=True) and pace.full_rate is None
    assert not pace.update(65.0, 63_400, 3_600, behind=True) and pace.full_rate == 1200.0
    # Slower than the stream now (800/s): bounded again, on a fresh measurement.
    assert pace.update(67.0, 65_000, 4_000, behind=True) and pace.full_rate == 800.0


def test_a_trainer_that_is_behind_spends_at_most_its_share_of_time_publishing():
    from services.trainer.service import export_pause_s

    assert export_pause_s(2.0, 3.0, saturated=False, share=0.25) == 2.0  # caught up: the configured interval
    assert export_pause_s(2.0, 3.0, saturated=True, share=0.25) == 9.0  # 3 s publishing in every 12 s
    assert export_pause_s(30.0, 3.0, saturated=True, share=0.25) == 30.0  # the interval already leaves more
    assert export_pause_s(2.0, 3.0, saturated=True, share=1.0) == 2.0
    assert export_pause_s(2.0, 0.0, saturated=True, share=0.25) == 2.0  # nothing published yet
    for publish_s in (0.5, 1.7, 4.0):
        pause = export_pause_s(1.0, publish_s, saturated=True, share=0.2)
        assert publish_s / (publish_s + pause) <= 0.2 + 1e-9


def test_config_carries_the_recipe_transition_span_and_refuses_bad_values_by_name():
    from recmodel.recipe import RECIPE

    cfg = load_config(TrainerConfig, environ={})
    kwargs = cfg.trainer.model.trainer_kwargs()
    assert (kwargs["transition_span"], kwargs["transition_backward"]) == (RECIPE["transition_span"],
                                                                         RECIPE["transition_backward"])
    for key, bad in (("transition_span", 0), ("transition_span", 10_000), ("transition_backward", 1.5),
                     ("transition_span_decay", 0)):
        with pytest.raises(ConfigError, match=key):
            load_config(TrainerConfig, environ={}, overrides={"trainer": {"model": {key: bad}}})


def test_step_events_follow_the_poll_between_batch_size_and_the_catch_up_size():
    from services.trainer.service import step_events

    assert step_events(40, 256, 2048, behind=False) == 256  # a slow stream: one step of what the poll holds
    assert step_events(700, 256, 2048, behind=False) == 700  # a fast one: one step for the poll, not three
    assert step_events(5000, 256, 2048, behind=False) == 2048
    assert step_events(40, 256, 2048, behind=True) == 2048  # behind: the catch-up size
    assert step_events(700, 256, 0, behind=False) is None and step_events(700, 256, 0, behind=True) is None
    assert step_events(100, 512, 300, behind=False) == 300  # never above the catch-up size
