"""Dedup by event_id over a bounded window that survives restarts.

Why the window survives a crash: the ingester commits its input offsets only after the records it
produced are acknowledged, so after a crash it re-reads (at most) the batches it had produced but not
yet committed. The ids of everything it produced are in the `events` topic itself, so the window is
rebuilt from the tail of `events` (the last ``capacity`` ids over all partitions) at start-up, and
topped up on every partition assignment (another replica may have died and left records produced but
uncommitted). A replayed record is then a dedup hit, not a second copy. No extra store to run or lose.

Limits (documented trade-offs): the window is a count of ids, not a time span; a duplicate published
more than ``capacity`` events after its original is forwarded again. With several replicas, each
keeps the whole recent tail of `events` (all partitions), so duplicates are caught whichever replica
reads them, as of its last top-up; a duplicate produced by another live replica since then is caught
at the next rebalance or, if apps key `events.raw` by user (the publish helper does), by the replica
owning that partition, which sees both copies.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque

from services.common.config import KafkaConfig
from services.common.rdkafka import PartitionReader
from streamrec_proto.v1 import event_pb2

logger = logging.getLogger(__name__)


class DedupWindow:
    """The last ``capacity`` distinct event ids (FIFO eviction)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[str] = deque()
        self._ids: set[str] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> bool:
        """Remember ``event_id``; False if it was already in the window (a duplicate)."""
        if event_id in self._ids:
            return False
        if self.capacity <= 0:
            return True
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.capacity:
            self._ids.discard(self._order.popleft())
        return True


class EventsTailReader:
    """Feeds the ids on the `events` topic into a DedupWindow, resuming where it last stopped."""

    def __init__(self, config: KafkaConfig, window: DedupWindow, group_id: str) -> None:
        self.config = config
        self.group_id = group_id  # the ingester's own (librdkafka wants one; it commits nothing there)
        self.window = window
        self.topic = config.topics.name("events")
        self._positions: dict[int, int] = {}  # partition -> next offset to read

    def catch_up(self, timeout_s: float = 60.0) -> int:
        """Read from the last position (or the window's worth before the end) to the end; -> ids read."""
        if self.window.capacity <= 0:
            return 0
        started = time.monotonic()
        reader = PartitionReader(self.config, self.topic, group_id=self.group_id, max_poll_records=5000,
                                 **{"fetch.wait.max.ms": 50})
        read = 0
        try:
            reader.assign(self._positions)
            ends = reader.end_offsets()
            per_part = math.ceil(self.window.capacity / len(ends))
            reader.seek_forward({p: end - per_part for p, end in ends.items()})
            for records in reader.read_to(ends, timeout_s):
                read += len(records)
                for rec in records:
                    try:
                        self.window.add(event_pb2.Event.FromString(rec.value()).event_id)
                    except Exception:  # noqa: BLE001 - a foreign record on `events` must not stop us
                        continue
            self._positions = dict(reader.positions)
            if reader.behind(ends):
                raise TimeoutError(f"reading the tail of {self.topic} took over {timeout_s}s")
        finally:
            reader.close()
        logger.info("dedup window rebuilt", extra={"topic": self.topic, "ids_read": read, "window": len(self.window),
                                                   "seconds": round(time.monotonic() - started, 3)})
        return read
