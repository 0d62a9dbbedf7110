"""Cross-check a ``model-versions`` record with the registry before inference acts on it.

Anyone who can write to the topic could otherwise point inference at any version (or pin it with a
huge ``sequence``). So a record is only a prompt to look again: ``AnnouncementCheck.targets`` asks
the registry (over mutual TLS) where the followed aliases point now, and that is what gets served.
A record that disagrees is logged and counted. When the registry cannot be asked, nothing changes
and the same record is checked again a little later.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

import grpc

logger = logging.getLogger(__name__)


class AnnouncementCheck:
    """``targets(event, aliases)`` -> the registry's ``{alias: version}`` (0 = unset), or None for "not now"."""

    def __init__(self, get_alias: Callable[[str, str], object], *, on_mismatch: Callable[[], None] | None = None,
                 retry_s: float = 2.0) -> None:
        self._get_alias = get_alias
        self._on_mismatch = on_mismatch
        self.retry_s = retry_s
        self._checked: tuple[object, dict[str, int]] | None = None  # (record, the registry's answer)
        self._next_try = 0.0

    def targets(self, event, aliases: Iterable[str]) -> dict[str, int] | None:
        if self._checked is not None and self._checked[0] is event:
            return self._checked[1]
        if time.monotonic() < self._next_try:
            return None
        truth: dict[str, int] = {}
        for alias in aliases:
            try:
                truth[alias] = int(self._get_alias(event.model_name, alias).version)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    truth[alias] = 0
                    continue
                logger.warning("cannot check a model-versions record with the registry; keeping what is served",
                               extra={"model": event.model_name, "sequence": event.sequence, "error": exc.code().name})
                self._next_try = time.monotonic() + self.retry_s
                return None
        claimed = {alias: int(event.aliases.get(alias, 0)) for alias in truth}
        if claimed != truth:
            logger.warning("model-versions record disagrees with the registry; serving what the registry says",
                           extra={"model": event.model_name, "sequence": event.sequence, "action": event.action,
                                  "record_aliases": claimed, "registry_aliases": truth})
            if self._on_mismatch:
                self._on_mismatch()
        self._checked = (event, truth)
        return truth
