"""Where artifact archives live, content-addressed by their sha256: a filesystem path or S3.

Stored objects are immutable: ``put`` of a digest already present is a no-op, so two versions
with identical bytes share one object.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Iterator, Protocol

from services.common.errors import NotFound

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_digest(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class ArtifactStore(Protocol):
    def put(self, sha256: str, source: Path) -> None: ...
    def exists(self, sha256: str) -> bool: ...
    def read_chunks(self, sha256: str, chunk_bytes: int) -> Iterator[bytes]: ...
    def delete(self, sha256: str) -> None: ...
    def list(self) -> Iterator[tuple[str, int]]: ...


class FilesystemArtifactStore:
    """``<root>/<aa>/<sha256>.tar``; writes go through a temp file + fsync + rename."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        check_digest(sha256)
        return self.root / sha256[:2] / f"{sha256}.tar"

    def put(self, sha256: str, source: Path) -> None:
        dest = self._path(sha256)
        if dest.exists():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{id(source)}.tmp")
        shutil.copyfile(source, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).exists()

    def read_chunks(self, sha256: str, chunk_bytes: int) -> Iterator[bytes]:
        try:
            f = open(self._path(sha256), "rb")
        except FileNotFoundError:
            raise NotFound(f"artifact {sha256} is not in the store") from None
        with f:
            while data := f.read(chunk_bytes):
                yield data

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def list(self) -> Iterator[tuple[str, int]]:
        for path in self.root.glob("??/*.tar"):
            digest = path.name[:-4]
            if _SHA256.match(digest):
                yield digest, path.stat().st_size


class S3ArtifactStore:
    """``s3://<bucket>/<prefix><sha256>.tar`` on AWS S3 or any S3-compatible server (MinIO, Ceph...)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 create_bucket: bool = False) -> None:
        import boto3  # optional dependency (extra "s3")
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self._s3 = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        from botocore.exceptions import ClientError
        self._client_error = ClientError
        if create_bucket:
            try:
                self._s3.head_bucket(Bucket=bucket)
            except ClientError:
                self._s3.create_bucket(Bucket=bucket)

    def _key(self, sha256: str) -> str:
        return f"{self.prefix}{check_digest(sha256)}.tar"

    def _missing(self, exc: Exception) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def put(self, sha256: str, source: Path) -> None:
        if self.exists(sha256):
            return
        # upload_file does multipart for large archives; S3 writes are atomic per object.
        self._s3.upload_file(str(source), self.bucket, self._key(sha256))

    def exists(self, sha256: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(sha256))
            return True
        except self._client_error as exc:
            if self._missing(exc):
                return False
            raise

    def read_chunks(self, sha256: str, chunk_bytes: int) -> Iterator[bytes]:
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=self._key(sha256))["Body"]
        except self._client_error as exc:
            if self._missing(exc):
                raise NotFound(f"artifact {sha256} is not in the store") from None
            raise
        try:
            yield from body.iter_chunks(chunk_bytes)
        finally:
            body.close()

    def delete(self, sha256: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._key(sha256))

    def list(self) -> Iterator[tuple[str, int]]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", ()):
                name = obj["Key"][len(self.prefix):]
                if name.endswith(".tar") and _SHA256.match(name[:-4]):
                    yield name[:-4], int(obj["Size"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_store(section) -> ArtifactStore:
    """Build the store named by a ``RegistrySection``."""
    if section.artifact_store == "s3":
        s3 = section.s3
        return S3ArtifactStore(s3.bucket, s3.prefix, s3.endpoint_url, s3.region, s3.access_key_id,
                               s3.secret_access_key, s3.create_bucket)
    return FilesystemArtifactStore(section.artifact_root)
