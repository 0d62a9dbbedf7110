"""Fetching and loading model versions: registry download (sha256-checked) or a local directory."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

from services.inference.config import IndexConfig
from services.inference.served_model import ServedModel

if TYPE_CHECKING:
    from recmodel.artifact import Manifest

logger = logging.getLogger(__name__)


class ArtifactSource(Protocol):
    def fetch(self, model_name: str, version: int, dest_dir: Path) -> tuple[Path, "Manifest"]:
        """A verified artifact directory for the version (may be dest_dir or somewhere else) and its manifest."""


class RegistrySource:
    """Downloads from the registry; RegistryClient checks the archive's digest and the files it holds."""

    def __init__(self, target: str, timeout_s: float = 60.0, *, tls) -> None:
        from services.common.registry_client import RegistryClient

        self.client = RegistryClient(target, timeout_s=timeout_s, tls=tls)

    def fetch(self, model_name: str, version: int, dest_dir: Path) -> tuple[Path, "Manifest"]:
        return dest_dir, self.client.download(model_name, version, dest_dir)

    def close(self) -> None:
        self.client.close()


class DirectorySource:
    """Artifacts laid out as ``<root>/<model_name>/<version>/`` (local development, no registry)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def fetch(self, model_name: str, version: int, dest_dir: Path) -> tuple[Path, "Manifest"]:
        from recmodel.artifact import verify_artifact

        path = self.root / model_name / str(version)
        return path, verify_artifact(path)  # no archive digest here: every file's sha256 is checked

    def close(self) -> None:
        pass


class ModelLoader:
    """Fetch -> load with the chosen execution providers -> index -> warm up. Raises on any failure."""

    def __init__(self, source: ArtifactSource, cache_dir: str | Path, *, index_config: IndexConfig = IndexConfig(),
                 providers: Sequence[str] | None = None, warmup_requests: int = 8, encoder_threads: int = 1) -> None:
        self.source = source
        self.encoder_threads = encoder_threads
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.index_config = index_config
        self.warmup_requests = warmup_requests
        self._providers = list(providers) if providers is not None else None

    @property
    def providers(self) -> list:
        if self._providers is None:
            from recmodel.serving import select_providers

            # TensorRT builds an engine per model the first time: keep them beside the artifacts.
            # select_providers logs the choice once.
            engines = self.cache_dir / "trt-engines"
            engines.mkdir(parents=True, exist_ok=True)
            self._providers = list(select_providers(trt_engine_cache_dir=str(engines)))
        return self._providers

    def load(self, model_name: str, version: int) -> ServedModel:
        start = time.perf_counter()
        dest = self.cache_dir / "artifacts" / model_name / f"{version}-{uuid.uuid4().hex[:8]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            path, manifest = self.source.fetch(model_name, version, dest)
            model = ServedModel.from_artifact(path, manifest, version=version, providers=self.providers,
                                              index_config=self.index_config, index_cache_dir=self.cache_dir,
                                              encoder_threads=self.encoder_threads)
            model.warm_up(self.warmup_requests)
        finally:
            # Everything is in memory now (or the load failed): the unpacked files are not needed.
            shutil.rmtree(dest, ignore_errors=True)
        logger.info("model loaded", extra={"model": model_name, "model_version": version, "items": len(model.item_ids),
                                           "index": model.index_kind, "seconds": round(time.perf_counter() - start, 3)})
        return model
