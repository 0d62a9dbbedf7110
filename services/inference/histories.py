"""Real-time user histories and recency-weighted popularity.

``UserHistoryStore`` starts from a model artifact's history snapshot and is kept current by
``HistoryFollower``, which reads the ``events`` topic from the snapshot's training offsets (partitions
assigned manually: every replica needs every user's events, so no consumer group). A user's new
event is visible to the next Recommend call, typically well under a second after it was produced.

On a model swap the store is kept: it started from an older snapshot and has read everything since,
so it is at least as fresh as the new snapshot for every partition it has caught up on. Only where the
new snapshot is ahead (the follower lags) does it move forward, taking the newer snapshot history of
each user and seeking those partitions to the snapshot's offsets.

The follower reads with librdkafka (services.common.rdkafka.PartitionReader), whose fetches run on C
threads: kafka-python's network loop, a Python thread sharing the interpreter lock with the gRPC
handlers, held records back by 100-200 ms whenever the process was busy.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from typing import Callable, Mapping, Sequence

from recmodel.data import DEFAULT_EVENT_WEIGHTS, HistoryEntry
from services.common.config import KafkaConfig
from services.common.rdkafka import KafkaException, PartitionReader
from services.common.supervision import SupervisedThread

logger = logging.getLogger(__name__)


class PopularityTracker:
    """Exponentially decayed, event-weighted item counts (half-life ``half_life_s``).

    Scores are kept relative to a reference time and rescaled now and then, so updates are O(1).
    """

    def __init__(self, half_life_s: float = 6 * 3600.0, weights: Mapping[str, float] | None = None) -> None:
        self.half_life_ms = half_life_s * 1000.0
        self.weights = dict(weights or DEFAULT_EVENT_WEIGHTS)
        self._scores: dict[str, float] = {}
        self._ref_ms: int | None = None
        self._lock = threading.Lock()
        self._ranking: list[tuple[str, float]] = []
        self._ranked_at = 0.0
        self._dirty = False

    def add(self, item_id: str, event_type: str, timestamp_ms: int) -> None:
        w = self.weights.get(event_type, 1.0)
        if w <= 0:
            return
        with self._lock:
            if self._ref_ms is None:
                self._ref_ms = timestamp_ms
            exponent = (timestamp_ms - self._ref_ms) / self.half_life_ms
            if exponent > 50:  # rescale before the numbers grow out of float range
                factor = 2.0 ** -exponent
                self._scores = {k: v * factor for k, v in self._scores.items()}
                self._ref_ms = timestamp_ms
                exponent = 0.0
            self._scores[item_id] = self._scores.get(item_id, 0.0) + w * 2.0 ** max(exponent, -1000.0)
            self._dirty = True

    def ranking(self, max_age_s: float = 0.5, limit: int = 20_000) -> list[tuple[str, float]]:
        """Items by decayed popularity, best first (recomputed at most every ``max_age_s``)."""
        now = time.monotonic()
        if self._dirty and now - self._ranked_at >= max_age_s:
            with self._lock:
                items = list(self._scores.items())
                self._dirty = False
            items.sort(key=lambda kv: -kv[1])
            top = items[:limit]
            norm = top[0][1] if top else 1.0
            self._ranking = [(k, v / norm) for k, v in top]
            self._ranked_at = now
        return self._ranking


# Users merge_snapshot takes per hold of the store's lock.
MERGE_CHUNK_USERS = 500


class UserHistoryStore:
    """Bounded per-user histories (last ``max_len`` events, at most ``max_users`` users, LRU by activity)."""

    def __init__(self, max_len: int = 200, max_users: int = 2_000_000, popularity: PopularityTracker | None = None) -> None:
        self.max_len = max_len
        self.max_users = max_users
        self.popularity = popularity or PopularityTracker()
        self._users: OrderedDict[str, deque[HistoryEntry]] = OrderedDict()
        # Per user, a number that changes whenever the history does (never reused, even after an
        # eviction), so caches keyed by it are invalidated by any new event.
        self._versions: dict[str, int] = {}
        self._next_version = itertools.count(1)
        self._lock = threading.Lock()
        self.newest_event_ms = 0
        self.events_applied = 0

    def __len__(self) -> int:
        return len(self._users)

    def get(self, user_id: str) -> list[HistoryEntry]:
        return self.get_versioned(user_id)[0]

    def version(self, user_id: str) -> int:
        """The user's history version (0 for a user with none), without copying the history."""
        return self._versions.get(user_id, 0)  # one dict read: atomic, no lock needed

    def get_versioned(self, user_id: str) -> tuple[list[HistoryEntry], int]:
        """The user's history and its version (0 for a user with none)."""
        with self._lock:
            hist = self._users.get(user_id)
            return (list(hist), self._versions.get(user_id, 0)) if hist else ([], 0)

    def _evict_oldest(self) -> None:
        user_id, _ = self._users.popitem(last=False)
        self._versions.pop(user_id, None)

    def append(self, user_id: str, item_id: str, event_type: str, timestamp_ms: int) -> None:
        with self._lock:
            hist = self._users.get(user_id)
            if hist is None:
                hist = self._users[user_id] = deque(maxlen=self.max_len)
                if len(self._users) > self.max_users:
                    self._evict_oldest()
            else:
                self._users.move_to_end(user_id)
            hist.append((item_id, event_type, int(timestamp_ms)))
            self._versions[user_id] = next(self._next_version)
            if timestamp_ms > self.newest_event_ms:
                self.newest_event_ms = int(timestamp_ms)
            self.events_applied += 1
        self.popularity.add(item_id, event_type, timestamp_ms)

    def merge_snapshot(self, snapshot: Mapping[str, Sequence[Sequence]], *, only_newer: bool = True) -> int:
        """Take each snapshot history whose newest event is newer than the store's; returns users taken.

        The lock is taken for MERGE_CHUNK_USERS users at a time, and a history is copied only when taken: a
        model's snapshot holds thousands of users, mostly older than the store, and new events and reads
        that wait on the lock would otherwise wait for all of it (43 ms for a 5,000-user snapshot on a quiet
        2-core machine, at every full model swap)."""
        taken = 0
        users = list(snapshot.items())
        for start in range(0, len(users), MERGE_CHUNK_USERS):
            with self._lock:
                for user_id, entries in users[start:start + MERGE_CHUNK_USERS]:
                    if not entries:
                        continue
                    newest = int(entries[-1][2])
                    mine = self._users.get(user_id)
                    if only_newer and mine and mine[-1][2] >= newest:
                        continue
                    recent = list(entries)[-self.max_len:]
                    self._users[user_id] = deque(((str(e[0]), str(e[1]), int(e[2])) for e in recent), maxlen=self.max_len)
                    self._versions[user_id] = next(self._next_version)
                    taken += 1
                    self.newest_event_ms = max(self.newest_event_ms, newest)
                while len(self._users) > self.max_users:
                    self._evict_oldest()
        return taken

    def seed_popularity(self, snapshot: Mapping[str, Sequence[Sequence]]) -> None:
        for entries in snapshot.values():
            for e in entries:
                self.popularity.add(str(e[0]), str(e[1]), int(e[2]))


class HistoryFollower:
    """Reads ``events`` (protobuf Event values) into a UserHistoryStore on a supervised background thread.

    A loop that dies is restarted with backoff and resumes where the store is (``positions``).
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        store: UserHistoryStore,
        *,
        on_lag: Callable[[dict[int, int]], None] | None = None,
        on_applied: Callable[[int], None] | None = None,
        lag_interval_s: float = 5.0,
        on_loop_restart: Callable[[str, BaseException | None], None] | None = None,
        on_loop_health: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.store = store
        self.topic = kafka.topics.name("events")
        self._on_lag = on_lag
        self._on_applied = on_applied
        self._lag_interval_s = lag_interval_s
        self._positions: dict[int, int] = {}
        self._pending_seek: dict[int, int] = {}
        self._seek_lock = threading.Lock()
        self._stop = threading.Event()
        self._started = threading.Event()
        self.supervisor = SupervisedThread("history-follower", self._run, self._stop,
                                           on_restart=on_loop_restart, on_health=on_loop_health)

    @property
    def positions(self) -> dict[int, int]:
        """Next offset to read per partition (what the store reflects)."""
        return dict(self._positions)

    def start_from(self, offsets: Mapping[int, int]) -> None:
        """Start (first model) or move partitions forward to ``offsets`` where they are ahead."""
        with self._seek_lock:
            for p, off in offsets.items():
                if off > self._positions.get(p, -1):
                    self._pending_seek[p] = off
        self.supervisor.start()

    def ahead_partitions(self, offsets: Mapping[int, int]) -> dict[int, int]:
        """Partitions where ``offsets`` are ahead of what the store has read."""
        return {p: o for p, o in offsets.items() if o > self._positions.get(p, 0)}

    @property
    def running(self) -> bool:
        return self.supervisor.started

    def wait_started(self, timeout_s: float = 30.0) -> bool:
        return self._started.wait(timeout_s)

    def stop(self) -> None:
        self.supervisor.stop(10)

    def _run(self) -> None:
        from streamrec_proto.v1 import event_pb2

        reader = self._connect()
        if reader is None:
            return
        try:
            with self._seek_lock:
                # A snapshot's offsets, else where the store is (a restarted loop), else the log start.
                start, self._pending_seek = {**self._positions, **self._pending_seek}, {}
            reader.assign(start)
            self._positions = reader.positions
            self._started.set()
            logger.info("following events", extra={"topic": self.topic, "offsets": dict(self._positions)})
            last_lag = 0.0
            while not self._stop.is_set():
                self._apply_seeks(reader)
                applied = 0
                for partition, records in reader.poll(timeout_ms=100).items():
                    for rec in records:
                        applied += self._apply(rec, event_pb2)
                        reader.advance({partition: rec.offset() + 1})  # a restart resumes after it
                if applied and self._on_applied:
                    self._on_applied(applied)
                if time.monotonic() - last_lag >= self._lag_interval_s:
                    last_lag = time.monotonic()
                    self._refresh(reader)
        finally:  # anything unexpected propagates to the supervisor, which restarts the loop
            reader.close()

    def _connect(self) -> PartitionReader | None:
        while not self._stop.is_set():
            try:
                return PartitionReader(self.kafka, self.topic, max_poll_records=5000, **{"fetch.wait.max.ms": 50})
            except KafkaException as exc:
                logger.warning("events consumer cannot connect; retrying", extra={"error": str(exc)})
                self._stop.wait(1.0)
        return None

    def _refresh(self, reader: PartitionReader) -> None:
        try:
            reader.refresh_partitions()
            if self._on_lag:
                self._on_lag(reader.lag())
        except KafkaException:
            pass  # the broker is away: the next round tries again

    def _apply_seeks(self, reader: PartitionReader) -> None:
        if not self._pending_seek:
            return
        with self._seek_lock:
            seeks, self._pending_seek = self._pending_seek, {}
        reader.seek_forward(seeks)

    def _apply(self, record, event_pb2) -> int:
        event = event_pb2.Event()
        try:
            event.ParseFromString(record.value() or b"")
        except Exception:  # noqa: BLE001 - `events` is validated upstream; a bad record is skipped, not fatal
            logger.warning("skipping unparsable event", extra={"partition": record.partition(), "offset": record.offset()})
            return 0
        if not event.user_id or not event.item_id:
            return 0
        self.store.append(event.user_id, event.item_id, event.type, event.timestamp_ms)
        return 1


def freshness_seconds(store: UserHistoryStore, now_ms: float | None = None) -> float:
    if not store.newest_event_ms:
        return math.nan
    now_ms = time.time() * 1000.0 if now_ms is None else now_ms
    return max(0.0, (now_ms - store.newest_event_ms) / 1000.0)
