"""Checkpoints: the trainer's whole state and the Kafka offsets it reflects, in one atomic file.

``checkpoint.pt`` is written by ``IncrementalTrainer.save_checkpoint`` (temp file + fsync + rename),
with the stream position in its ``extra`` block, so model, optimiser, vocabulary, replay buffer,
histories *and* offsets change together or not at all. A crash between checkpoints loses only work
whose offsets were not recorded either: after restart those events are read and trained again, once.

``registered.json`` (also replaced atomically) records the last version registered and the offsets it
was trained to, so a restart knows whether the checkpointed state still has to be published.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recmodel.atomic import atomic_writer

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
REGISTERED_FILE = "registered.json"


@dataclass
class StreamPosition:
    """Where in the stream a trainer state stands (stored in the checkpoint's ``extra``)."""

    events_topic: str
    items_topic: str
    events_offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset
    items_offsets: dict[int, int] = field(default_factory=dict)
    records_consumed: int = 0  # records read from `events` (trained + undecodable)
    events_skipped: int = 0
    newest_event_ms: int = 0
    epoch: int = 0  # leadership epoch (Lease transitions) of the writer

    def to_extra(self) -> dict:
        d = asdict(self)
        # String keys: the same shape as manifest.json's training_offsets.
        d["events_offsets"] = {str(p): int(o) for p, o in self.events_offsets.items()}
        d["items_offsets"] = {str(p): int(o) for p, o in self.items_offsets.items()}
        return d

    @classmethod
    def from_extra(cls, extra: dict) -> "StreamPosition":
        d = dict(extra)
        d["events_offsets"] = {int(p): int(o) for p, o in d.get("events_offsets", {}).items()}
        d["items_offsets"] = {int(p): int(o) for p, o in d.get("items_offsets", {}).items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Registration:
    version: int
    events_offsets: dict[int, int]
    events_trained: int
    # The catalog it was exported with: a new item alone is reason for a new version, since the
    # text tower makes it recommendable before anyone interacts with it.
    items_offsets: dict[int, int] = field(default_factory=dict)


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_writer(path, "w") as fh:
        fh.write(text)


class CheckpointStore:
    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / CHECKPOINT_FILE
        self.exports_dir = self.dir / "exports"

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, trainer, position: StreamPosition) -> Path:
        path = trainer.save_checkpoint(self.path, extra=position.to_extra())
        self._fsync_dir()
        return path

    def load(self, *, text_encoder=None, device=None):
        """``(trainer, StreamPosition)`` from the last checkpoint, or None when there is none."""
        if not self.exists():
            return None
        from recmodel.train import IncrementalTrainer

        trainer, extra = IncrementalTrainer.load_checkpoint(self.path, text_encoder=text_encoder, device=device)
        return trainer, StreamPosition.from_extra(extra)

    def load_registration(self) -> Registration | None:
        path = self.dir / REGISTERED_FILE
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return Registration(int(d["version"]), {int(p): int(o) for p, o in d["events_offsets"].items()},
                            int(d.get("events_trained", 0)),
                            {int(p): int(o) for p, o in d.get("items_offsets", {}).items()})

    def save_registration(self, reg: Registration) -> None:
        _atomic_write_text(self.dir / REGISTERED_FILE, json.dumps({
            "version": reg.version, "events_offsets": {str(p): o for p, o in reg.events_offsets.items()},
            "events_trained": reg.events_trained,
            "items_offsets": {str(p): o for p, o in reg.items_offsets.items()}}))
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        # The rename is durable only once the directory entry is on disk.
        try:
            fd = os.open(self.dir, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
