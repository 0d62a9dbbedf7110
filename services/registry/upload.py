"""Receive an uploaded artifact archive into a staging area and prove it is intact.

The archive is written to a temp file while hashing; its sha256 and size must equal the header's;
then it is unpacked into a temp dir and every file is checked against the manifest's sha256
(``recmodel.artifact.verify_artifact``). Nothing is visible to anyone until the caller stores the
archive and commits the version; whatever happens, the staging files are removed on exit.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator

from recmodel import artifact as artifact_lib
from services.common.errors import DataLoss, InvalidInput
from streamrec_proto.v1 import registry_pb2

# The manifest travels in every announcement of its version: keep it well under Kafka's message limit.
MAX_MANIFEST_BYTES = 256 * 1024
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class VerifiedUpload:
    tar_path: Path
    sha256: str
    size_bytes: int
    manifest_json: str
    manifest: dict


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name or ""):
        raise InvalidInput(f"invalid model name {name!r}: use 1-200 letters, digits, '.', '_' or '-'")
    return name


def check_header(header: registry_pb2.RegisterHeader, max_bytes: int) -> None:
    check_model_name(header.model_name)
    if len(header.manifest_json) > MAX_MANIFEST_BYTES:
        raise InvalidInput(f"header.manifest_json is larger than {MAX_MANIFEST_BYTES} bytes")
    if not _SHA256.match(header.artifact_sha256):
        raise InvalidInput(f"header.artifact_sha256 must be 64 lower-case hex digits, got {header.artifact_sha256!r}")
    if not 0 < header.artifact_size_bytes <= max_bytes:
        raise InvalidInput(f"header.artifact_size_bytes must be between 1 and {max_bytes}, "
                           f"got {header.artifact_size_bytes}")
    if header.parent_version < 0:
        raise InvalidInput(f"header.parent_version must be >= 0, got {header.parent_version}")


def staging_prefix(owner: str) -> str:
    """Name prefix of this registry process's staging dirs, so start-up cleanup removes only its own."""
    return "upload-" + re.sub(r"[^A-Za-z0-9_.-]", "_", owner)[:100] + "-"


@contextmanager
def receive_upload(header: registry_pb2.RegisterHeader, chunks: Iterable[bytes], staging_dir: Path,
                   max_bytes: int, prefix: str = "upload-") -> Iterator[VerifiedUpload]:
    """Stage and verify the archive; yields it while the caller stores it, then removes the staging files."""
    check_header(header, max_bytes)
    staging_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=staging_dir))
    try:
        tar_path = work / "artifact.tar"
        digest, size = hashlib.sha256(), 0
        with open(tar_path, "wb") as out:
            for data in chunks:
                size += len(data)
                if size > header.artifact_size_bytes:
                    raise DataLoss(f"upload is larger than the {header.artifact_size_bytes} bytes the header declared")
                digest.update(data)
                out.write(data)
        sha256 = digest.hexdigest()
        if size != header.artifact_size_bytes:
            raise DataLoss(f"upload has {size} bytes, the header declared {header.artifact_size_bytes}")
        if sha256 != header.artifact_sha256:
            raise DataLoss(f"upload has sha256 {sha256}, the header declared {header.artifact_sha256}")
        unpacked = work / "unpacked"
        unpacked.mkdir()
        try:
            # Uncompressed tar only, with member and byte caps checked while unpacking (no archive bombs).
            artifact_lib.unpack_artifact(tar_path, unpacked, max_bytes=size)
            artifact_lib.verify_artifact(unpacked)
        except artifact_lib.ArtifactError as exc:
            raise DataLoss(f"artifact failed verification: {exc}") from exc
        if (unpacked / "manifest.json").stat().st_size > MAX_MANIFEST_BYTES:
            raise InvalidInput(f"manifest.json is larger than {MAX_MANIFEST_BYTES} bytes")
        manifest_json = (unpacked / "manifest.json").read_text()
        manifest = json.loads(manifest_json)
        if not isinstance(manifest, dict):
            raise InvalidInput("manifest.json must hold a JSON object")
        named = manifest.get("model_name")
        if named and named != header.model_name:
            raise InvalidInput(f"manifest names model {named!r} but the upload is for {header.model_name!r}")
        if header.manifest_json:
            try:
                declared = json.loads(header.manifest_json)
            except ValueError as exc:
                raise InvalidInput(f"header.manifest_json is not JSON: {exc}") from exc
            if declared != manifest:
                raise InvalidInput("header.manifest_json differs from the manifest.json inside the archive")
        yield VerifiedUpload(tar_path, sha256, size, manifest_json, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def manifest_metrics(manifest: dict) -> dict[str, float]:
    out = {}
    for key, value in (manifest.get("metrics") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[str(key)] = float(value)
    return out


def manifest_offsets(manifest: dict) -> list[tuple[str, int, int]]:
    raw = manifest.get("training_offsets") or {}
    if not isinstance(raw, dict):
        raise InvalidInput("manifest training_offsets must map topic -> {partition: next_offset}")
    out = []
    try:
        for topic, parts in raw.items():
            for partition, offset in parts.items():
                out.append((str(topic), int(partition), int(offset)))
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidInput(f"manifest training_offsets is malformed: {exc}") from exc
    return sorted(out)


def manifest_created_at_ms(value, *, default_ms: int) -> int:
    """The manifest's created_at as epoch ms: accepts ISO-8601 text, epoch seconds or epoch ms (else ``default_ms``)."""
    if isinstance(value, bool) or value is None:
        return default_ms
    if isinstance(value, (int, float)):
        return int(value if value > 1e11 else value * 1000)
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return default_ms
