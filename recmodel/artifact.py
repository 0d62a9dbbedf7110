"""Model artifacts: a flat directory with ``manifest.json`` plus the files it lists by sha256.

Pure stdlib + numpy, shared by the trainer (export), the registry (verify, pack) and inference
(unpack, verify, load). Layout::

    manifest.json      model name, version, created_at, training offsets, metrics, model info,
                       and {file name: sha256} for every other file
    user_encoder.onnx  the user encoder (see recmodel.export)
    items.npz          item ids, vectors, availability, titles, categories
    transitions.npz    the item-to-item transition table (see recmodel.transitions)
    ivf.npz            large catalogs only: the IVF quantizer servers index the items with (recmodel.ivf)
    histories.json     recent user histories at the training offsets

``pack_artifact`` writes a deterministic POSIX tar (sorted names, zero mtimes/owners), so the same
directory always gives the same archive sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recmodel.atomic import atomic_writer

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class ArtifactError(Exception):
    """An artifact is missing, malformed, tampered with or unsafe."""


@dataclass
class Manifest:
    model_name: str
    version: int = 0  # assigned by the registry; 0 until registered
    created_at: str = ""  # ISO 8601, UTC
    training_offsets: dict[str, dict[str, int]] = field(default_factory=dict)  # topic -> partition -> next offset
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative name -> sha256 hex
    dim: int = 0
    max_len: int = 0
    event_types: list[str] = field(default_factory=list)  # event type name for ids 1..n
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ArtifactError(f"{MANIFEST_NAME}: unknown fields {sorted(unknown)}")
        try:
            m = cls(**data)
        except TypeError as exc:
            raise ArtifactError(f"{MANIFEST_NAME}: {exc}") from None
        if not isinstance(m.model_name, str) or not m.model_name:
            raise ArtifactError(f"{MANIFEST_NAME}: model_name must be a non-empty string")
        if m.format_version != FORMAT_VERSION:
            raise ArtifactError(f"{MANIFEST_NAME}: unsupported format_version {m.format_version}")
        m.training_offsets = {
            str(t): {str(p): int(o) for p, o in parts.items()} for t, parts in (m.training_offsets or {}).items()
        }
        m.metrics = {str(k): float(v) for k, v in (m.metrics or {}).items()}
        return m


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


def write_manifest(directory: str | Path, manifest: Manifest, *, hash_files: bool = True) -> Manifest:
    """Write ``manifest.json``; with ``hash_files`` the file table is recomputed from the directory."""
    directory = Path(directory)
    if hash_files:
        manifest.files = {
            p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_NAME
        }
    _atomic_write(directory / MANIFEST_NAME, manifest.to_json().encode())
    return manifest


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{MANIFEST_NAME}: missing in {directory}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{MANIFEST_NAME}: expected a JSON object")
    return Manifest.from_dict(data)


def verify_artifact(directory: str | Path) -> Manifest:
    """Check every listed file's sha256 and that no unlisted file is present."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    present = {p.name for p in directory.iterdir() if p.name != MANIFEST_NAME}
    for name, digest in sorted(manifest.files.items()):
        if "/" in name or name in ("", ".", ".."):
            raise ArtifactError(f"{name}: file names in the manifest must be flat")
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{name}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise ArtifactError(f"{name}: sha256 mismatch (manifest {digest[:12]}..., file {actual[:12]}...)")
    extra = sorted(present - set(manifest.files))
    if extra:
        raise ArtifactError(f"{extra[0]}: present but not listed in the manifest")
    return manifest


def pack_artifact(directory: str | Path, out_path: str | Path) -> str:
    """Write a deterministic tar of the flat ``directory``; returns the archive's sha256 hex."""
    directory = Path(directory)
    out_path = Path(out_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.iterdir(), key=lambda p: p.name):
            if not path.is_file() or path.is_symlink():
                raise ArtifactError(f"{path.name}: artifacts hold regular files only")
            info = tarfile.TarInfo(path.name)
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    data = buf.getvalue()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_path, data)
    return hashlib.sha256(data).hexdigest()


# An artifact is a handful of files: manifest, encoder(s), item table, histories.
MAX_MEMBERS = 64
# Unpacked size can never exceed this, whatever the archive claims (the registry's default upload cap).
MAX_UNPACKED_BYTES = 4 * 1024**3


def unpack_artifact(tar_path: str | Path, directory: str | Path, *, max_members: int = MAX_MEMBERS,
                    max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Extract a packed artifact into ``directory`` (created); refuses anything but flat regular files.

    Only uncompressed POSIX tar is read (``pack_artifact`` writes nothing else), so the bytes
    written can never outgrow the archive; members and bytes are still counted while unpacking
    and the first one over ``max_members`` / ``max_bytes`` stops it, before it is written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        tar = tarfile.open(tar_path, mode="r:")  # "r:" = no decompression: gzip, bz2 and xz are refused
    except (tarfile.TarError, OSError) as exc:
        raise ArtifactError(f"{tar_path}: not an uncompressed tar archive ({exc})") from None
    written = 0
    seen: set[str] = set()
    with tar:
        try:
            for count, m in enumerate(_members(tar), 1):
                name = m.name
                if count > max_members:
                    raise ArtifactError(f"archive has more than {max_members} members")
                if name.startswith("/") or os.path.isabs(name):
                    raise ArtifactError(f"{name}: absolute path in archive")
                if ".." in Path(name).parts or "/" in name.strip("/") or name in ("", "."):
                    raise ArtifactError(f"{name}: path outside the artifact directory")
                if not m.isreg() or m.issparse():
                    raise ArtifactError(f"{name}: archive members must be regular files (no links, directories or "
                                        "sparse files)")
                if name in seen:
                    raise ArtifactError(f"{name}: appears twice in the archive")
                seen.add(name)
                if written + m.size > max_bytes:
                    raise ArtifactError(f"archive unpacks to more than {max_bytes} bytes")
                src = tar.extractfile(m)
                assert src is not None
                with src, open(directory / name, "xb") as dst:
                    remaining = m.size
                    while remaining > 0 and (block := src.read(min(1 << 20, remaining))):
                        remaining -= len(block)
                        dst.write(block)
                written += m.size
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArtifactError(f"{tar_path}: cannot unpack ({exc})") from None
    return directory


def _members(tar: tarfile.TarFile):
    """Members one at a time, so a huge member table is never read into memory before the count check."""
    while (member := tar.next()) is not None:
        yield member
