"""DeltaShipper: when a delta is due, and a delta that cannot be built never stops training."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from recmodel.data import SyntheticStream
from recmodel.delta import DeltaBase
from services.trainer.deltas import DeltaShipper
from services.trainer.metrics import TrainerMetrics
from tests.unit.recmodel.conftest import make_trainer


def _base(ids, dim) -> DeltaBase:
    n = len(ids)
    return DeltaBase("0" * 64, list(ids), np.zeros((n, dim), dtype=np.float32), np.zeros(n + 1, dtype=np.int64),
                     np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


def _shipper(metrics, **kw) -> DeltaShipper:
    # No registry: nothing here may get as far as registering.
    return DeltaShipper(None, metrics, model_name="m", trainer_id="t", interval_s=1.0, max_bytes=1 << 20, **kw)


def test_a_delta_is_due_after_an_interval_with_new_training_near_the_end_of_the_stream():
    metrics = TrainerMetrics(CollectorRegistry())
    shipper = _shipper(metrics, max_lag=100)
    assert not shipper.due(10.0, steps=5, lag=0)  # no registered version to be a delta of yet
    shipper.registered(3, _base(["a"], 4), steps=5)
    assert not shipper.due(10.0, steps=5, lag=0)  # nothing trained since that version
    assert shipper.due(10.0, steps=6, lag=100)
    assert not shipper.due(10.0, steps=6, lag=101)  # too far behind for a delta to be fresh
    assert not shipper.due(10.0, steps=6, lag=None)  # lag not known yet
    shipper.close()


def test_a_delta_that_cannot_be_built_is_counted_and_training_goes_on():
    small_stream = SyntheticStream(seed=11, n_users=60, n_items=200, n_categories=6, n_events=500)
    trainer = make_trainer()
    trainer.upsert_items(small_stream.items())
    trainer.train_events(list(small_stream.events())[:300])
    metrics = TrainerMetrics(CollectorRegistry())
    shipper = _shipper(metrics)
    # A base of another dimension than the trainer's: comparing vectors fails.
    shipper.registered(1, _base(trainer.item_ids[:5], trainer.dim + 1), steps=0)
    shipper.ship(trainer, {"t": {0: 300}}, newest_event_ms=0)  # must not raise
    assert metrics.delta_failures.labels("build")._value.get() == 1
    assert metrics.deltas_shipped._value.get() == 0
    trainer.train_events(list(small_stream.events())[300:400])  # the trainer is unharmed
    shipper.close()
