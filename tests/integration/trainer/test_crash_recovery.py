"""SIGKILL the trainer process mid-stream, several times; after the last restart every published event
has been trained exactly once (checked from the checkpoint's counters and offsets, and the metric)."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from recmodel.data import SyntheticStream
from services.common.kafka import ensure_topics
from services.common.net import free_port
from tests.integration.trainer.publishing import (
    end_offsets,
    metric_value,
    publish_events,
    publish_items,
    read_checkpoint,
    scrape_or_none,
    start_trainer,
    write_config,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

def _trained(ckpt_dir: Path) -> int:
    state = read_checkpoint(ckpt_dir)
    return state["events_trained"] if state else 0


def test_sigkill_restarts_train_every_event_exactly_once(kafka_config, tmp_path):
    ensure_topics(kafka_config, [kafka_config.topics.name("events"), kafka_config.topics.name("items")])
    stream = SyntheticStream(seed=5, n_users=80, n_items=150, n_events=8000)
    events = list(stream.events())
    publish_items(kafka_config, stream.items())
    chunks = [events[lo:lo + 2000] for lo in range(0, len(events), 2000)]
    ckpt = tmp_path / "ckpt"
    log = tmp_path / "trainer.log"
    cfg = write_config(tmp_path / "trainer.yaml", kafka_config, checkpoint_dir=ckpt, checkpoint_interval_s=0.3,
                       poll_max_records=250, export_interval_s=3600)
    rng = random.Random(0)
    published = 0
    kills = 0
    for chunk in chunks[:3]:
        publish_events(kafka_config, chunk)
        published += len(chunk)
        proc = start_trainer(cfg, log)
        try:
            before = _trained(ckpt)
            # Let it checkpoint some progress, then kill it at a random moment while it trains.
            wait_for(lambda: _trained(ckpt) > before, 120, "a checkpoint with progress")
            wait_for(lambda: proc.poll() is None and rng.random() < 0.3, 5, "a random moment", interval_s=0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        kills += 1
        assert proc.returncode == -signal.SIGKILL
        state = read_checkpoint(ckpt)
        # The surviving checkpoint is consistent: counters match its offsets.
        assert state["events_trained"] == sum(state["events_offsets"].values()) == state["records_consumed"]
        assert state["events_trained"] <= published

    publish_events(kafka_config, chunks[3])
    published += len(chunks[3])
    assert published == len(events)
    port = free_port()
    cfg = write_config(tmp_path / "trainer.yaml", kafka_config, checkpoint_dir=ckpt, checkpoint_interval_s=0.3,
                       poll_max_records=250, export_interval_s=3600, metrics_port=port)
    proc = start_trainer(cfg, log)
    try:
        ends = end_offsets(kafka_config)
        wait_for(lambda: (read_checkpoint(ckpt) or {}).get("events_offsets") == ends, 180,
                 "the checkpoint to reach the end offsets")
        text = wait_for(lambda: scrape_or_none(port), 30, "metrics")
        assert metric_value(text, "streamrec_trainer_events_trained_total") == published
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0, log.read_text()[-3000:]
    state = read_checkpoint(ckpt)
    assert kills == 3
    assert state["events_offsets"] == ends
    # No double training (it would exceed) and no gaps (it would fall short).
    assert state["events_trained"] == published == state["records_consumed"]
    assert state["events_skipped"] == 0

