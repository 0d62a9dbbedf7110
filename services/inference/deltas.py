"""Applies the trainer's weight deltas to the production version between full versions.

Every ``inference.delta_poll_s`` the follower asks the registry (``DownloadDelta``, with this server's
credentials) for a delta of the version it serves newer than the one applied. A delta names the full
version it applies to and is refused otherwise: by the registry (which keeps them per version), here
(the version served and the item table's sha256 must be the delta's base), and by the repository,
which swaps the patched model in only if the version it was made from is still the one served (a new
full version wins over a delta of the old one). A delta that does not apply is logged, counted and
never tried again; the model served stays as it was. The loop runs supervised, like the watcher.

Deltas are not judged by the promotion gate, full versions are. When the gate rejects a version newer
than the one served (announced on ``model-versions`` and confirmed with the registry), the trainer's
weights since the served version are worse than it beyond noise, and the deltas of the served version
carried some of them: the follower goes back to the version as registered, and applies no delta of a
version older than a rejected one again (the trainer's deltas are of its newest version; they apply once
a version newer than the rejected one is promoted).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from recmodel.delta import read_delta
from services.common.supervision import SupervisedThread
from services.inference.repository import PRODUCTION, ModelRepository

logger = logging.getLogger(__name__)

MAX_REMEMBERED_FAILURES = 1024


class DeltaFollower:
    def __init__(
        self,
        fetch: Callable[..., object],  # RegistryClient.download_delta
        model_name: str,
        repository: ModelRepository,
        *,
        poll_s: float,
        warmup_requests: int = 8,
        session_options: Callable[[], object] | None = None,
        on_applied: Callable[[float], None] | None = None,
        on_failure: Callable[[], None] | None = None,
        on_loop_restart: Callable[[str, BaseException | None], None] | None = None,
        on_loop_health: Callable[[str, bool], None] | None = None,
        is_rejected: Callable[[str, int], bool] | None = None,  # the registry's word on a version's gate decision
    ) -> None:
        self.fetch = fetch
        self.is_rejected = is_rejected
        self._announced_rejections: set[int] = set()  # versions model-versions says were rejected, to confirm
        self._announced_lock = threading.Lock()  # added to on the watcher's thread, taken on this loop's
        self._rejected = 0  # the newest version the registry confirmed rejected
        self.model_name = model_name
        self.repository = repository
        self.poll_s = poll_s
        self.warmup_requests = warmup_requests
        self.session_options = session_options
        self._on_applied = on_applied
        self._on_failure = on_failure
        self._failed: set[tuple[int, int]] = set()
        self._unreachable = False
        self._stop = threading.Event()
        self.supervisor = SupervisedThread("delta-follower", self._run, self._stop,
                                           on_restart=on_loop_restart, on_health=on_loop_health)

    def start(self) -> "DeltaFollower":
        self.supervisor.start()
        return self

    def stop(self) -> None:
        self.supervisor.stop(15)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll_once()

    def note_announcement(self, event) -> None:
        """A ``model-versions`` record (the watcher's thread): a rejection is checked at the next poll."""
        if event.action == "rejected" and event.version > self._rejected:
            with self._announced_lock:
                if len(self._announced_rejections) < 64:
                    self._announced_rejections.add(int(event.version))

    def _confirm_rejections(self) -> None:
        with self._announced_lock:
            pending, self._announced_rejections = sorted(self._announced_rejections), set()
        for version in pending:
            try:
                confirmed = self.is_rejected is None or self.is_rejected(self.model_name, version)
            except Exception:  # noqa: BLE001 - asked again at the next rejection announced
                confirmed = False
            if confirmed and version > self._rejected:
                self._rejected = version
                logger.info("a newer version was rejected by the promotion gate: deltas of older versions are no "
                            "longer applied", extra={"model_version": version})

    def poll_once(self) -> bool:
        """Fetch and apply the newest delta of the production version, if there is one; -> whether one was applied."""
        if self._announced_rejections:
            self._confirm_rejections()
        model = self.repository.get(PRODUCTION)
        if model is None:
            return False
        if model.version < self._rejected:
            if model.delta and self.repository.swap_if(PRODUCTION, model, model.base):
                logger.info("weight deltas dropped: serving the version as registered",
                            extra={"model_version": model.version, "delta": model.delta,
                                   "rejected_version": self._rejected})
            return False
        start = time.perf_counter()  # the apply time the metrics report includes the download
        try:
            reply = self.fetch(self.model_name, model.version, after_sequence=model.delta)
        except Exception as exc:  # noqa: BLE001 - the registry may be away: keep serving, ask again later
            if not self._unreachable:
                logger.warning("cannot ask the registry for weight deltas; serving the model as it is",
                               extra={"model_version": model.version, "error": f"{type(exc).__name__}: {exc}"})
            self._unreachable = True
            return False
        if self._unreachable:
            logger.info("the registry answers weight delta requests again", extra={"model_version": model.version})
            self._unreachable = False
        key = (model.version, int(reply.sequence))
        if reply.sequence <= model.delta or reply.base_version != model.version or key in self._failed:
            return False
        offsets: dict[str, dict[int, int]] = {}
        for o in reply.training_offsets:
            offsets.setdefault(o.topic, {})[int(o.partition)] = int(o.offset)
        try:
            delta = read_delta(reply.payload, dim=int(model.item_vectors.shape[1]), n_items=len(model.item_ids))
            patched = model.with_delta(delta, reply.sequence, offsets,
                                       session_options=self.session_options() if self.session_options else None)
            patched.warm_up(self.warmup_requests)
        except Exception as exc:  # noqa: BLE001 - whatever a delta makes fail, the version served stays; never retried
            if len(self._failed) >= MAX_REMEMBERED_FAILURES:
                self._failed.clear()
            self._failed.add(key)
            logger.error("weight delta refused; serving the model as it was",
                         extra={"model_version": model.version, "delta": reply.sequence, "error": str(exc)})
            if self._on_failure:
                self._on_failure()
            return False
        if not self.repository.swap_if(PRODUCTION, model, patched):
            return False  # another version (or delta) took production meanwhile
        seconds = time.perf_counter() - start
        if self._on_applied:
            self._on_applied(seconds)
        logger.debug("weight delta applied", extra={"model_version": model.version, "delta": reply.sequence,
                                                    "item_rows": len(delta.rows), "seconds": round(seconds, 3)})
        return True
