"""Client of the model registry (streamrec.v1.ModelRegistry) used by the trainer, inference and CLI.

Uploads pack an artifact directory into a POSIX tar (``recmodel.artifact.pack_artifact``) and
stream a ``RegisterHeader`` followed by the tar in chunks. Downloads stream the tar back, check
its sha256 and size against the first chunk (the digest covers every file), unpack it and check
that the files are the ones its manifest lists; any mismatch raises ``services.common.errors.DataLoss``.
Weight deltas travel in one message each; ``download_delta`` checks the payload's sha256 the same
way. Server errors surface as
``grpc.RpcError``. The channel speaks TLS with the caller's identity (``tls``); the registry
decides per method what that identity may do.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from services.common.errors import DataLoss, InvalidInput
from services.common.grpc import open_channel
from services.common.tls import TlsConfig
from streamrec_proto.v1 import registry_pb2, registry_pb2_grpc

if TYPE_CHECKING:
    from recmodel.artifact import Manifest

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
MANIFEST_FILE = "manifest.json"


def _artifact_lib():
    # Imported when used: recmodel.artifact pulls in numpy only, but keep `streamrec models` light.
    from recmodel import artifact

    return artifact


class RegistryClient:
    """A connection to one registry; thread-safe (one gRPC channel shared by all calls)."""

    def __init__(self, target: str, timeout_s: float = 30.0, upload_timeout_s: float = 600.0,
                 chunk_bytes: int = CHUNK_BYTES, *, tls: TlsConfig) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.upload_timeout_s = upload_timeout_s
        self.chunk_bytes = chunk_bytes
        self._channel = open_channel(target, tls)
        self._stub = registry_pb2_grpc.ModelRegistryStub(self._channel)

    # -- writes ---------------------------------------------------------------------------------

    def register(
        self,
        model_name: str,
        artifact_dir: str | Path,
        *,
        trainer_id: str,
        parent_version: int = 0,
        auto_promote: bool = True,
    ) -> registry_pb2.ModelVersion:
        """Pack ``artifact_dir`` and register it as the next version of ``model_name``."""
        artifact_dir = Path(artifact_dir)
        manifest_path = artifact_dir / MANIFEST_FILE
        if not manifest_path.is_file():
            raise InvalidInput(f"{artifact_dir} has no {MANIFEST_FILE}")
        manifest_json = manifest_path.read_text()
        with tempfile.TemporaryDirectory(prefix="streamrec-upload-") as tmp:
            tar_path = Path(tmp) / "artifact.tar"
            sha256 = _artifact_lib().pack_artifact(artifact_dir, tar_path)
            header = registry_pb2.RegisterHeader(
                model_name=model_name,
                manifest_json=manifest_json,
                trainer_id=trainer_id,
                parent_version=parent_version,
                artifact_sha256=sha256,
                artifact_size_bytes=tar_path.stat().st_size,
                auto_promote=auto_promote,
            )
            return self.register_archive(header, tar_path)

    def register_archive(self, header: registry_pb2.RegisterHeader, tar_path: str | Path) -> registry_pb2.ModelVersion:
        """Stream an already packed archive under ``header`` (its digest and size must be set)."""
        result = self._stub.RegisterVersion(_upload_requests(header, Path(tar_path), self.chunk_bytes),
                                            timeout=self.upload_timeout_s)
        logger.info("registered model version", extra={"model": result.model_name, "model_version": result.version,
                                                       "gate": result.gate_decision})
        return result

    def register_delta(
        self,
        model_name: str,
        base_version: int,
        payload: bytes,
        training_offsets: dict[str, dict[int, int]],
        *,
        created_at_ms: int,
        newest_event_ms: int,
        trainer_id: str = "",
    ) -> registry_pb2.ModelDelta:
        """Register ``payload`` as the next weight delta of ``base_version``; -> the delta (without its payload).

        ``training_offsets``: topic -> {partition: next offset} the delta trained to; each at least the
        base version's.
        """
        request = registry_pb2.RegisterDeltaRequest(
            model_name=model_name, base_version=base_version, payload=payload,
            payload_sha256=hashlib.sha256(payload).hexdigest(),
            training_offsets=[registry_pb2.TopicPartitionOffset(topic=topic, partition=partition, offset=offset)
                              for topic, parts in sorted(training_offsets.items())
                              for partition, offset in sorted(parts.items())],
            created_at_ms=created_at_ms, newest_event_ms=newest_event_ms, trainer_id=trainer_id,
        )
        result = self._stub.RegisterDelta(request, timeout=self.timeout_s)
        logger.debug("registered weight delta", extra={"model": model_name, "model_version": base_version,
                                                      "sequence": result.sequence, "size_bytes": len(payload)})
        return result

    def set_alias(self, model_name: str, alias: str, version: int, reason: str = "") -> registry_pb2.ModelVersion:
        return self._stub.SetAlias(registry_pb2.SetAliasRequest(
            model_name=model_name, alias=alias, version=version, reason=reason), timeout=self.timeout_s)

    def rollback(self, model_name: str, reason: str = "") -> registry_pb2.ModelVersion:
        return self._stub.Rollback(registry_pb2.RollbackRequest(model_name=model_name, reason=reason),
                                   timeout=self.timeout_s)

    def archive(self, model_name: str, version: int) -> registry_pb2.ModelVersion:
        return self._stub.ArchiveVersion(registry_pb2.ArchiveVersionRequest(model_name=model_name, version=version),
                                         timeout=self.timeout_s)

    # -- reads ----------------------------------------------------------------------------------

    def get_version(self, model_name: str, version: int) -> registry_pb2.ModelVersion:
        return self._stub.GetVersion(registry_pb2.GetVersionRequest(model_name=model_name, version=version),
                                     timeout=self.timeout_s)

    def list_versions(self, model_name: str, include_archived: bool = False) -> list[registry_pb2.ModelVersion]:
        resp = self._stub.ListVersions(registry_pb2.ListVersionsRequest(
            model_name=model_name, include_archived=include_archived), timeout=self.timeout_s)
        return list(resp.versions)

    def list_parked(self, model_name: str) -> list[registry_pb2.ParkedAnnouncement]:
        """Announcements of the model that were too large to ever send on model-versions."""
        resp = self._stub.ListVersions(registry_pb2.ListVersionsRequest(model_name=model_name), timeout=self.timeout_s)
        return list(resp.parked)

    def get_alias(self, model_name: str, alias: str) -> registry_pb2.ModelVersion:
        return self._stub.GetAlias(registry_pb2.GetAliasRequest(model_name=model_name, alias=alias),
                                   timeout=self.timeout_s)

    def get_delta(self, model_name: str, base_version: int, *, after_sequence: int = 0,
                  sequence: int = 0) -> registry_pb2.ModelDelta:
        """Delta ``sequence`` of ``base_version``, or its newest after ``after_sequence``, without the payload.

        Sequence 0 in the reply: there is no such delta (none newer, or no longer kept).
        """
        return self._stub.GetDelta(_delta_request(model_name, base_version, after_sequence, sequence),
                                   timeout=self.timeout_s)

    def download_delta(self, model_name: str, base_version: int, *, after_sequence: int = 0,
                       sequence: int = 0) -> registry_pb2.ModelDelta:
        """``get_delta`` with the payload, checked against its sha256 and size (DataLoss when they differ)."""
        delta = self._stub.DownloadDelta(_delta_request(model_name, base_version, after_sequence, sequence),
                                         timeout=self.timeout_s)
        if delta.sequence == 0:
            return delta
        actual = hashlib.sha256(delta.payload).hexdigest()
        if actual != delta.payload_sha256 or len(delta.payload) != delta.payload_size_bytes:
            raise DataLoss(f"{model_name} v{base_version} delta {delta.sequence}: downloaded payload has sha256 "
                           f"{actual} and {len(delta.payload)} bytes, the registry announced "
                           f"{delta.payload_sha256} and {delta.payload_size_bytes} bytes")
        return delta

    def download(self, model_name: str, version: int, dest_dir: str | Path) -> "Manifest":
        """Download, check and unpack version ``version`` into ``dest_dir`` (created; must be empty); -> its manifest.

        Raises DataLoss when the archive's digest or size does not match, or its files are not the
        ones the manifest lists. The digest was checked over every byte, so files are not hashed again.
        """
        dest_dir = Path(dest_dir)
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".tar", dir=dest_dir.parent)
        tmp = Path(tmp_name)
        try:
            expected_sha, expected_size = "", -1
            digest, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                stream = self._stub.DownloadArtifact(
                    registry_pb2.DownloadArtifactRequest(model_name=model_name, version=version),
                    timeout=self.upload_timeout_s)
                for i, chunk in enumerate(stream):
                    if i == 0:
                        expected_sha, expected_size = chunk.artifact_sha256, chunk.artifact_size_bytes
                    size += len(chunk.data)
                    if size > expected_size:  # never write more than was announced
                        raise DataLoss(f"{model_name} v{version}: the registry sent more than the "
                                       f"{expected_size} bytes it announced")
                    digest.update(chunk.data)
                    out.write(chunk.data)
            actual = digest.hexdigest()
            if not expected_sha:
                raise DataLoss(f"{model_name} v{version}: the registry sent no digest")
            if actual != expected_sha or size != expected_size:
                raise DataLoss(f"{model_name} v{version}: downloaded archive has sha256 {actual} and {size} bytes, "
                               f"the registry announced {expected_sha} and {expected_size} bytes")
            artifact = _artifact_lib()
            dest_dir.mkdir(parents=True, exist_ok=True)
            try:
                artifact.unpack_artifact(tmp, dest_dir)
                return _listed_files_present(dest_dir, artifact.read_manifest(dest_dir))
            except artifact.ArtifactError as exc:
                shutil.rmtree(dest_dir, ignore_errors=True)
                raise DataLoss(f"{model_name} v{version}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _listed_files_present(directory: Path, manifest: "Manifest") -> "Manifest":
    """``manifest``, once the directory holds exactly the files it lists."""
    artifact = _artifact_lib()
    present = {p.name for p in directory.iterdir() if p.name != artifact.MANIFEST_NAME}
    listed = set(manifest.files)
    if listed - present:
        raise artifact.ArtifactError(f"{min(listed - present)}: listed in the manifest but missing")
    if present - listed:
        raise artifact.ArtifactError(f"{min(present - listed)}: present but not listed in the manifest")
    return manifest


def _delta_request(model_name: str, base_version: int, after_sequence: int,
                   sequence: int) -> registry_pb2.GetDeltaRequest:
    return registry_pb2.GetDeltaRequest(model_name=model_name, base_version=base_version,
                                        after_sequence=after_sequence, sequence=sequence)


def _upload_requests(header: registry_pb2.RegisterHeader, tar_path: Path,
                     chunk_bytes: int) -> Iterator[registry_pb2.RegisterVersionRequest]:
    yield registry_pb2.RegisterVersionRequest(header=header)
    with open(tar_path, "rb") as f:
        while True:
            data = f.read(chunk_bytes)
            if not data:
                return
            yield registry_pb2.RegisterVersionRequest(chunk=data)


__all__ = ["RegistryClient", "CHUNK_BYTES"]
