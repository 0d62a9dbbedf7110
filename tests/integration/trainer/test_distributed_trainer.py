"""`streamrec trainer` with data-parallel training on (gloo, two CPU ranks): rank 0 is the trainer service,
trains every event once with the other rank, and a SIGTERM to the launching process (what Kubernetes
sends to a pod's main process) stops every rank cleanly after a final checkpoint."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from recmodel.data import SyntheticStream
from services.common.kafka import ensure_topics
from services.common.net import free_port
from tests.integration.trainer import publishing as pub
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _processes_in_group(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    out.append(int(entry.name))
            except ProcessLookupError:
                pass
    return out


def test_two_ranks_train_every_event_once_and_stop_on_sigterm(kafka_config, tmp_path):
    ensure_topics(kafka_config, [kafka_config.topics.name("events"), kafka_config.topics.name("items")])
    stream = SyntheticStream(seed=6, n_users=60, n_items=120, n_events=3000)
    pub.publish_items(kafka_config, stream.items())
    events = list(stream.events())
    pub.publish_events(kafka_config, events)
    ends = pub.end_offsets(kafka_config)
    assert sum(ends.values()) == len(events)
    ckpt = tmp_path / "ckpt"
    port = free_port()
    distributed = {"enabled": True, "world_size": 2, "backend": "gloo", "master_port": free_port()}
    cfg = pub.write_config(tmp_path / "trainer.yaml", kafka_config, checkpoint_dir=ckpt, checkpoint_interval_s=0.3,
                           poll_max_records=250, export_interval_s=3600, metrics_port=port, distributed=distributed)
    log = tmp_path / "trainer.log"
    proc = pub.start_trainer(cfg, log, start_new_session=True)
    try:
        wait_for(lambda: (pub.read_checkpoint(ckpt) or {}).get("events_offsets") == ends, 300,
                 "the checkpoint to reach the end offsets")
        trained = "streamrec_trainer_events_trained_total"
        wait_for(lambda: pub.metric_value(pub.scrape_or_none(port) or "", trained) == len(events), 60,
                 "rank 0's metrics to count every event")
        assert len(_processes_in_group(proc.pid)) >= 3  # the launcher and both ranks
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert rc == 0, log.read_text()[-3000:]
    wait_for(lambda: not _processes_in_group(proc.pid), 30, "every rank to exit")
    state = pub.read_checkpoint(ckpt)
    assert state["events_offsets"] == ends and state["events_trained"] == len(events) == state["records_consumed"]
