"""The event and item records the library trains on."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase", "like", "dislike", "rating")

# How much an event says "the user wants this item". Events with weight <= 0 (dislike) are kept in
# the user's history as input (the encoder sees the type) but are never used as positive targets.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 0.5,
    "click": 1.0,
    "cart": 2.0,
    "purchase": 3.0,
    "like": 2.0,
    "dislike": -1.0,
    "rating": 1.0,
}

# One interaction in a user's history, as the encoder reads it: (item_id, event_type, timestamp_ms),
# oldest first.
HistoryEntry = tuple[str, str, int]

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _freeze(mapping: Mapping[str, str] | None) -> Mapping[str, str]:
    if not mapping:
        return _EMPTY
    return MappingProxyType({str(k): str(v) for k, v in mapping.items()})


@dataclass(frozen=True, slots=True)
class Event:
    """One user-item interaction. ``timestamp_ms`` is milliseconds since the Unix epoch."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    value: float
    timestamp_ms: int
    context: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if not isinstance(self.context, MappingProxyType):
            object.__setattr__(self, "context", _freeze(self.context))

    def to_dict(self) -> dict:
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "type": self.type,
            "value": self.value,
            "timestamp_ms": self.timestamp_ms,
            "context": dict(self.context),
        }


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog item. ``document()`` is what the text encoder embeds."""

    item_id: str
    title: str = ""
    text: str = ""
    categories: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    available: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.categories, tuple):
            object.__setattr__(self, "categories", tuple(self.categories))
        if not isinstance(self.attributes, MappingProxyType):
            object.__setattr__(self, "attributes", _freeze(self.attributes))

    def document(self) -> str:
        parts = [p for p in (self.title.strip(), self.text.strip()) if p]
        if self.categories:
            parts.append("Categories: " + ", ".join(self.categories) + ".")
        return " ".join(parts) if parts else self.item_id

    def to_dict(self) -> dict:
        return {
            "item_id": self.item_id,
            "title": self.title,
            "text": self.text,
            "categories": list(self.categories),
            "attributes": dict(self.attributes),
            "available": self.available,
        }
