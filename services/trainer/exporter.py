"""Export the trained state as an artifact and register it with the registry."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from services.common.registry_client import RegistryClient

logger = logging.getLogger(__name__)


class VersionExporter:
    """``publish(trainer, offsets, metrics)`` -> registered version number."""

    def __init__(self, client: RegistryClient, *, model_name: str, trainer_id: str, auto_promote: bool,
                 exports_dir: Path, keep_exports: int = 2) -> None:
        self.client = client
        self.model_name = model_name
        self.trainer_id = trainer_id
        self.auto_promote = auto_promote
        self.exports_dir = Path(exports_dir)
        self.keep_exports = keep_exports

    def export(self, trainer, events_topic: str, events_offsets: dict[int, int], metrics: dict[str, float]) -> Path:
        from recmodel.export import export_artifact

        self.exports_dir.mkdir(parents=True, exist_ok=True)
        out = self.exports_dir / f"{time.time_ns()}"
        training_offsets = {events_topic: {str(p): int(o) for p, o in sorted(events_offsets.items())}}
        export_artifact(trainer, out, model_name=self.model_name, training_offsets=training_offsets,
                        metrics={k: float(v) for k, v in metrics.items()})
        self._prune(keep=out)
        return out

    def register(self, artifact_dir: Path, parent_version: int) -> int:
        result = self.client.register(self.model_name, artifact_dir, trainer_id=self.trainer_id,
                                      parent_version=parent_version, auto_promote=self.auto_promote)
        return int(result.version)

    def _prune(self, keep: Path) -> None:
        dirs = sorted((d for d in self.exports_dir.iterdir() if d.is_dir()), key=lambda d: d.name)
        for d in dirs[: max(0, len(dirs) - self.keep_exports)]:
            if d != keep:
                shutil.rmtree(d, ignore_errors=True)
