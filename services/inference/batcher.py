"""Micro-batching: concurrent requests share one user-encoder run.

Request threads enqueue (model, history, now) and wait; one worker takes what is queued (up to
``max_batch``, waiting at most ``max_wait_s`` for more once it has one) and runs each model's encoder
once for its requests. With ``max_wait_s = 0`` batches form only from requests that arrived while the
previous run was busy, so an idle server adds no latency. The worker runs supervised: if it dies it is
restarted, and requests queued meanwhile are served by the next run.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Sequence

import numpy as np

from services.common.supervision import SupervisedThread
from services.inference.served_model import HistoryEntry, ServedModel


class EncoderBatcher:
    def __init__(self, max_batch: int = 32, max_wait_s: float = 0.0,
                 on_batch: Callable[[int], None] | None = None,
                 on_loop_restart: Callable[[str, BaseException | None], None] | None = None,
                 on_loop_health: Callable[[str, bool], None] | None = None) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        # Short backoff: requests wait on this worker.
        self.supervisor = SupervisedThread("encoder-batcher", self._run, self._stop, initial_backoff_s=0.05,
                                           max_backoff_s=2.0, on_restart=on_loop_restart,
                                           on_health=on_loop_health).start()

    def submit(self, model: ServedModel, history: Sequence[HistoryEntry], now_ms: int) -> Future:
        fut: Future = Future()
        self._queue.put((model, history, now_ms, fut))
        return fut

    def encode(self, model: ServedModel, history: Sequence[HistoryEntry], now_ms: int, timeout_s: float | None = None) -> np.ndarray:
        return self.submit(model, history, now_ms).result(timeout=timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self.supervisor.stop(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    remaining = deadline - time.monotonic()
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._stop.set()
                    break
                batch.append(item)
            self._encode(batch)

    def _encode(self, batch: list) -> None:
        by_model: dict[int, list] = {}
        for entry in batch:
            if entry[3].set_running_or_notify_cancel():
                by_model.setdefault(id(entry[0]), []).append(entry)
        for entries in by_model.values():
            model = entries[0][0]
            try:
                vectors = model.encode([e[1] for e in entries], [e[2] for e in entries])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                for e in entries:
                    e[3].set_exception(exc)
                continue
            if self._on_batch:
                self._on_batch(len(entries))
            for e, v in zip(entries, vectors):
                e[3].set_result(v)
