"""DeltaShipper: when a delta is due, and a delta that cannot be built never stops training."""

from __future__ import annotations

import threading

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


def _trained(n_events: int = 300):
    stream = SyntheticStream(seed=11, n_users=60, n_items=200, n_categories=6, n_events=500)
    trainer = make_trainer()
    trainer.upsert_items(stream.items())
    trainer.train_events(list(stream.events())[:n_events])
    return trainer, stream


def test_a_delta_over_the_size_limit_is_counted_and_not_registered():
    trainer, _ = _trained()
    metrics = TrainerMetrics(CollectorRegistry())
    shipper = DeltaShipper(None, metrics, model_name="m", trainer_id="t", interval_s=1.0, max_bytes=1000)
    shipper.registered(1, _base(trainer.item_ids, trainer.dim), steps=0)
    shipper.ship(trainer, {"t": {0: 300}}, newest_event_ms=0)
    shipper.collect(wait=True)  # no registry client: reaching register_delta would count as refused
    assert metrics.delta_failures.labels("too_large")._value.get() == 1
    assert metrics.delta_failures.labels("refused")._value.get() == 0
    assert metrics.deltas_shipped._value.get() == 0
    shipper.close()


def test_a_delta_is_registered_from_the_shippers_thread_with_what_the_trainer_held_when_it_was_due():
    from recmodel.delta import read_delta

    trainer, stream = _trained()
    sent = []

    class Registry:
        def register_delta(self, model, version, data, offsets, **kw):
            sent.append((threading.current_thread().name, version, data))

    metrics = TrainerMetrics(CollectorRegistry())
    shipper = DeltaShipper(Registry(), metrics, model_name="m", trainer_id="t", interval_s=1.0, max_bytes=1 << 24)
    base = _base(trainer.item_ids, trainer.dim)
    shipper.registered(4, base, steps=0)
    busy = threading.Event()
    shipper._pool.submit(busy.wait, 60)  # the shipper's thread encodes only after the training below
    shipper.ship(trainer, {"t": {0: 300}}, newest_event_ms=0)
    counts_then = trainer.transitions.to_csr(base.ids)
    trainer.train_events(list(stream.events())[300:500])  # training goes on while the delta waits
    assert trainer.transitions.to_csr(base.ids)["probs"].tolist() != counts_then["probs"].tolist()
    busy.set()
    shipper.collect(wait=True)
    shipper.close()
    assert metrics.deltas_shipped._value.get() == 1
    (thread, version, data), = sent
    assert thread.startswith("trainer-delta") and version == 4
    delta = read_delta(data, dim=trainer.dim, n_items=len(base.ids))
    # every transition row of the state at ship() time, none of what was trained after
    rows = np.flatnonzero(np.diff(counts_then["indptr"]))
    np.testing.assert_array_equal(delta.tr_rows, rows)
    np.testing.assert_array_equal(delta.tr_indices, counts_then["indices"])
    np.testing.assert_array_equal(delta.tr_probs, counts_then["probs"])
