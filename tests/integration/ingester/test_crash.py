"""Crash safety: SIGKILL the ingester process mid-stream, again and again; nothing is lost or doubled.

The exact-count assertion is what the rebuilt dedup window buys: run with
STREAMREC_INGESTER_REBUILD_DEDUP_WINDOW=false and tens of replayed duplicates survive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml

from services.common.kafka import ensure_topics, make_consumer, partitions_for
from services.common.net import free_port
from services.cli.publish import EventPublisher
from streamrec_proto.v1 import event_pb2
from tests.integration.ingester.helpers import header_map, wait_for
from tests.integration.topics import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
N_VALID = 3000
KILLS = 3


def _spawn(config_path: Path, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "services.ingester", "--config", str(config_path)],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        log.close()


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
            return resp.status, resp.read().decode()
    except OSError as exc:
        return getattr(exc, "code", 0) or 0, ""


def _publish(kafka_config, done: threading.Event, expected_bad: list) -> None:
    """N_VALID events paced over a few seconds, every 25th sent twice, every 40th followed by a bad one."""
    now = int(time.time() * 1000)
    with EventPublisher(kafka_config, linger_ms=2) as pub:
        for i in range(N_VALID):
            doc = {"event_id": f"ev-{i}", "user_id": f"u{i % 37}", "item_id": f"i{i % 101}", "type": "view",
                   "timestamp_ms": now + i}
            pub.publish_event(doc)
            if i % 25 == 0:
                pub.publish_event(doc)  # the app retried: a duplicate
            if i % 40 == 0:
                pub.publish_event(doc | {"event_id": f"bad-{i}", "type": "teleport"})
                expected_bad.append(f"bad-{i}")
            if i % 100 == 99:
                pub.flush()
                time.sleep(0.25)  # pacing: the stream keeps flowing across the kills
    done.set()


def test_sigkill_mid_stream_loses_nothing_and_the_replay_is_not_double_counted(kafka_config, tmp_path):
    ensure_topics(kafka_config)
    metrics_port = free_port()
    config_path = tmp_path / "ingester.yaml"
    config_path.write_text(yaml.safe_dump({
        "kafka": json.loads(kafka_config.model_dump_json()),
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "ingester": {"group_id": kafka_config.topics.prefix + "crash", "group_instance_id": "ingester-0",
                     "batch_max_records": 500, "poll_timeout_ms": 50, "lag_interval_s": 0.5},
    }))
    log_path = tmp_path / "ingester.log"
    events_topic = kafka_config.topics.name("events")
    watcher = make_consumer(kafka_config, None, None)
    parts = partitions_for(watcher, events_topic)

    def produced() -> int:
        return sum(watcher.end_offsets(parts).values())

    done, bad = threading.Event(), []
    publisher = threading.Thread(target=_publish, args=(kafka_config, done, bad), daemon=True)
    proc = None
    try:
        publisher.start()
        kills_mid_stream = 0
        for _ in range(KILLS):
            proc = _spawn(config_path, log_path)
            before = produced()
            # Kill as soon as this incarnation's first output is visible: it is then most likely between
            # "produced and acknowledged" and "input committed", the moment a replay would double-count.
            wait_for(lambda: proc.poll() is not None or produced() > before, 60, "ingester progress", interval_s=0.005)
            assert proc.poll() is None, log_path.read_text()[-3000:]
            kills_mid_stream += not done.is_set()
            proc.send_signal(signal.SIGKILL)
            proc.wait(60)
        assert kills_mid_stream >= 2, "the kills happened while the stream was still flowing"

        proc = _spawn(config_path, log_path)
        wait_for(lambda: _http(metrics_port, "/readyz")[0] == 200, 60, "/readyz")
        publisher.join(120)
        assert done.is_set()
        wait_for(lambda: produced() >= N_VALID, 90, f"{N_VALID} events on {events_topic}")
        # All input committed: the lag gauges read zero.
        def caught_up() -> bool:
            status, text = _http(metrics_port, "/metrics")
            lags = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("streamrec_ingester_consumer_lag_records{") and "events.raw" in line]
            return status == 200 and len(lags) == kafka_config.topics.partitions and sum(lags) == 0
        wait_for(caught_up, 60, "consumer lag 0")
        _, metrics_text = _http(metrics_port, "/metrics")
        for name in ("records_in_total", "records_out_total", "rejected_total", "dedup_hits_total",
                     "batch_duration_seconds_bucket", "consumer_lag_records", "last_event_timestamp_seconds"):
            assert f"streamrec_ingester_{name}" in metrics_text

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "SIGTERM: the batch in hand is finished and committed, exit 0"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(60)
        watcher.close()

    ids = Counter(event_pb2.Event.FromString(r.value).event_id for r in read_topic(kafka_config, events_topic))
    assert set(ids) == {f"ev-{i}" for i in range(N_VALID)}, "every valid event arrived at least once"
    assert sum(ids.values()) == N_VALID, (
        f"{sum(ids.values()) - N_VALID} duplicates survived: {[k for k, v in ids.items() if v > 1][:10]}")
    dlq_ids = {json.loads(r.value)["event_id"] for r in read_topic(kafka_config, kafka_config.topics.name("dlq"))
               if header_map(r)["streamrec.error.code"] == b"unknown_event_type"}
    assert dlq_ids == set(bad), "every bad record reached the DLQ (at least once)"
    log = log_path.read_text()
    assert log.count("dedup window rebuilt") >= KILLS + 1
