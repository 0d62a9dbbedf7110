"""Real-time histories from the real `events` topic, without any model involved."""

from __future__ import annotations

import time

import pytest

from services.common.kafka import ensure_topics, make_producer
from services.inference.histories import HistoryFollower, UserHistoryStore
from streamrec_proto.v1 import event_pb2
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _send(producer, topic, user, item, ts):
    ev = event_pb2.Event(event_id=f"{user}-{item}-{ts}", user_id=user, item_id=item, type="click", timestamp_ms=ts)
    return producer.send(topic, key=user.encode(), value=ev.SerializeToString(),
                         headers=[("content-type", b"application/x-protobuf")])


def test_follower_starts_at_snapshot_offsets_and_applies_new_events(kafka_config):
    topic = kafka_config.topics.name("events")
    ensure_topics(kafka_config, [topic])
    producer = make_producer(kafka_config)
    # Already in the "snapshot": everything before these offsets.
    metas = [_send(producer, topic, "u1", f"old{j}", 1000 + j).get(timeout=30) for j in range(3)]
    producer.flush()
    offsets = {p: 0 for p in range(kafka_config.topics.partitions)}
    for m in metas:
        offsets[m.partition] = max(offsets[m.partition], m.offset + 1)
    store = UserHistoryStore(max_len=10)
    store.merge_snapshot({"u1": [("old0", "click", 1000), ("old1", "click", 1001), ("old2", "click", 1002)]}, only_newer=False)
    lags = []
    follower = HistoryFollower(kafka_config, store, on_lag=lags.append, lag_interval_s=0.1)
    follower.start_from(offsets)
    try:
        assert follower.wait_started(30)
        _send(producer, topic, "u1", "fresh", int(time.time() * 1000))
        producer.flush()
        # How soon is `streamrec bench freshness`'s to measure (history p99 well under a second).
        wait_for(lambda: store.get("u1")[-1][0] == "fresh", 60, "the new event in the history")
        assert [e[0] for e in store.get("u1")] == ["old0", "old1", "old2", "fresh"]  # snapshot events not re-applied
        wait_for(lambda: lags and sum(lags[-1].values()) == 0, 60, "lag to reach 0")
    finally:
        follower.stop()
        producer.close()


class _StoreThatFailsOnce(UserHistoryStore):
    """Raises the first time it is given ``poison`` (a bug in the loop, as far as the follower knows)."""

    def __init__(self, poison: str) -> None:
        super().__init__(max_len=50)
        self.poison = poison
        self.failed = False

    def append(self, user_id, item_id, event_type, timestamp_ms) -> None:
        if item_id == self.poison and not self.failed:
            self.failed = True
            raise RuntimeError("injected failure")
        super().append(user_id, item_id, event_type, timestamp_ms)


def test_a_follower_that_dies_is_restarted_and_resumes_without_losing_or_repeating_events(kafka_config):
    topic = kafka_config.topics.name("events")
    ensure_topics(kafka_config, [topic])
    store = _StoreThatFailsOnce(poison="i5")
    restarts = []
    follower = HistoryFollower(kafka_config, store, on_loop_restart=lambda loop, exc: restarts.append((loop, str(exc))))
    follower.supervisor.initial_backoff_s = 0.05
    follower.start_from({})
    producer = make_producer(kafka_config)
    try:
        assert follower.wait_started(30)
        for j in range(10):
            _send(producer, topic, "u1", f"i{j}", 1000 + j)  # one user: one partition, in order
        producer.flush()
        wait_for(lambda: len(store.get("u1")) >= 10, 60, "every event in the history after the restart")
        assert [e[0] for e in store.get("u1")] == [f"i{j}" for j in range(10)], "each event exactly once, in order"
        assert restarts == [("history-follower", "injected failure")]
        assert follower.supervisor.healthy
    finally:
        follower.stop()
        producer.close()
