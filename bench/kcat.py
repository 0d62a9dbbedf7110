"""``PacedKcat``: the benches' background stream, published by kcat (librdkafka) at a set rate.

A Python producer costs a good part of a core at a few thousand events per second, on the same cores as
the stack the bench measures; kcat costs a few percent of one. The bench's thread only formats each
event (the demo's JSON, keyed by user, as ``services.stack.demo.DemoPublisher`` sends them) and writes
a slice of lines to kcat's stdin every 20 ms.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Iterator

from recmodel.data import Event
from services.common.process import die_with_parent
from services.stack.demo import event_record


class PacedKcat:
    """kcat -P on ``topic``, fed ``rate`` events per second from ``events`` in 20 ms slices from one thread
    (set ``rate`` at any time; ``sent`` counts the events written). Timestamps are the time of writing.
    ``done`` is set when ``events`` runs out, or when publishing failed (``error``)."""

    def __init__(self, bootstrap: str, topic: str, events: Iterator[Event], rate: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            ["kcat", "-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-H", "content-type=application/json",
             "-X", "linger.ms=5", "-X", "queue.buffering.max.messages=1000000"],
            stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.events = iter(events)
        self.sent = 0
        self.rate = rate
        self.done = threading.Event()
        self.error: Exception | None = None  # what stopped the thread early (kcat gone, a bad event)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-kcat", daemon=True)

    def start(self) -> "PacedKcat":
        self._thread.start()
        return self

    def _lines(self, n: int) -> bytes:
        now = int(time.time() * 1000)
        out = []
        for event in self.events:
            key = event.user_id
            if "\t" in key or "\n" in key:  # kcat's line format: the key ends at a tab, the record at a newline
                raise ValueError(f"user id {key!r} holds a tab or a newline")
            out.append(b"%s\t%s\n" % (key.encode(), event_record(event, now)))
            if len(out) == n:
                break
        else:
            self.done.set()
        self.sent += len(out)
        return b"".join(out)

    def _run(self) -> None:
        owed = 0.0
        last = time.monotonic()
        try:
            while not self._stop.is_set() and not self.done.is_set():
                now = time.monotonic()
                owed += (now - last) * self.rate
                last = now
                n = int(owed)
                if n:
                    owed -= n
                    self.proc.stdin.write(self._lines(n))
                    self.proc.stdin.flush()
                time.sleep(0.02)
        except Exception as exc:  # noqa: BLE001 - kept for the bench to report; publishing stops
            self.error = exc
            self.done.set()

    def close(self) -> None:
        """Stop writing and wait for kcat to deliver what it was given."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(10)
        self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
