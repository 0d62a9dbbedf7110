"""`streamrec trainer` with data-parallel training on (gloo, two CPU ranks): rank 0 is the trainer service,
trains every event once with the other rank, and a SIGTERM to the launching process (what Kubernetes
sends to a pod's main process) stops every rank cleanly after a final checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recmodel.data import SyntheticStream
from services.common.kafka import ensure_topics
from tests.integration.trainer.publishing import (
    end_offsets,
    free_port,
    metric_value,
    publish_events,
    publish_items,
    read_checkpoint,
    scrape,
    write_config,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]


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


def _scrape_or_none(port: int) -> str | None:
    try:
        return scrape(port)
    except OSError:
        return None


def test_two_ranks_train_every_event_once_and_stop_on_sigterm(kafka_config, tmp_path):
    ensure_topics(kafka_config, [kafka_config.topics.name("events"), kafka_config.topics.name("items")])
    stream = SyntheticStream(seed=6, n_users=60, n_items=120, n_events=3000)
    publish_items(kafka_config, stream.items())
    events = list(stream.events())
    publish_events(kafka_config, events)
    ends = end_offsets(kafka_config)
    assert sum(ends.values()) == len(events)
    ckpt = tmp_path / "ckpt"
    port = free_port()
    cfg = write_config(tmp_path / "trainer.yaml", kafka_config, checkpoint_dir=ckpt, checkpoint_interval_s=0.3,
                       poll_max_records=250, export_interval_s=3600, metrics_port=port,
                       distributed={"enabled": True, "world_size": 2, "backend": "gloo", "master_port": free_port()})
    log = tmp_path / "trainer.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "services.trainer", "--config", str(cfg)], cwd=ROOT, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: (read_checkpoint(ckpt) or {}).get("events_offsets") == ends, 300,
                 "the checkpoint to reach the end offsets")
        wait_for(lambda: metric_value(_scrape_or_none(port) or "", "streamrec_trainer_events_trained_total") == len(events),
                 60, "rank 0's metrics to count every event")
        assert len(_processes_in_group(proc.pid)) >= 3  # the launcher and both ranks
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert rc == 0, log.read_text()[-3000:]
    wait_for(lambda: not _processes_in_group(proc.pid), 30, "every rank to exit")
    state = read_checkpoint(ckpt)
    assert state["events_offsets"] == ends and state["events_trained"] == len(events) == state["records_consumed"]
