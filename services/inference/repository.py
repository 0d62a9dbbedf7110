"""The loaded model versions, by alias, swapped atomically.

The alias map is an immutable dict replaced as a whole, so a reader takes one reference and keeps a
consistent (model) for its whole request, while a swap never waits for readers.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Callable

from services.common.aliases import CANARY, PRODUCTION
from services.inference.served_model import ServedModel



def user_bucket(user_id: str) -> float:
    """A stable value in [0, 1) per user (same on every replica and across restarts)."""
    digest = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class ModelRepository:
    def __init__(self, canary_share: float = 0.0) -> None:
        self.canary_share = canary_share
        self._models: dict[str, ServedModel] = {}
        self._lock = threading.Lock()  # serialises writers only
        self._listeners: list[Callable[[str, ServedModel | None], None]] = []

    def on_change(self, listener: Callable[[str, ServedModel | None], None]) -> None:
        self._listeners.append(listener)

    def get(self, alias: str = PRODUCTION) -> ServedModel | None:
        return self._models.get(alias)

    def snapshot(self) -> dict[str, ServedModel]:
        return self._models

    @property
    def ready(self) -> bool:
        model = self._models.get(PRODUCTION)
        return model is not None and model.ready

    def for_user(self, user_id: str) -> ServedModel | None:
        models = self._models
        canary = models.get(CANARY)
        if canary is not None and self.canary_share > 0 and user_bucket(user_id) < self.canary_share:
            return canary
        return models.get(PRODUCTION)

    def swap_if(self, alias: str, expected: ServedModel | None, model: ServedModel) -> bool:
        """Point ``alias`` at ``model`` only while it still points at ``expected`` (a model derived from it, such
        as a weight delta's, never replaces a version swapped in meanwhile); -> whether it did."""
        if not model.ready:
            raise ValueError(f"model {model.name} v{model.version} is not warmed up")
        with self._lock:
            if self._models.get(alias) is not expected:
                return False
            new = dict(self._models)
            new[alias] = model
            self._models = new
        for listener in self._listeners:
            listener(alias, model)
        return True

    def swap(self, alias: str, model: ServedModel | None) -> ServedModel | None:
        """Point ``alias`` at ``model`` (None removes it); returns the model it replaced."""
        if model is not None and not model.ready:
            raise ValueError(f"model {model.name} v{model.version} is not warmed up")
        with self._lock:
            new = dict(self._models)
            old = new.pop(alias, None)
            if model is not None:
                new[alias] = model
            self._models = new
        for listener in self._listeners:
            listener(alias, model)
        return old
