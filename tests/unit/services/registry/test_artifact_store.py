"""Artifact stores: the filesystem store, and the S3 store against a local S3-compatible HTTP server.

The S3 server is moto's standalone server (``moto.server``), a real HTTP endpoint boto3 talks
to exactly as it would to MinIO or AWS; the test is skipped when it is not installed.
"""

from __future__ import annotations

import hashlib

import pytest

from services.common.errors import NotFound
from services.registry.artifact_store import FilesystemArtifactStore, S3ArtifactStore


def _blob(tmp_path, n=300_000):
    path = tmp_path / "blob.tar"
    path.write_bytes(bytes(range(256)) * (n // 256))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _exercise(store, tmp_path):
    path, sha = _blob(tmp_path)
    assert not store.exists(sha)
    store.put(sha, path)
    store.put(sha, path)  # content-addressed: a second put is a no-op
    assert store.exists(sha)
    assert b"".join(store.read_chunks(sha, 64 * 1024)) == path.read_bytes()
    assert list(store.list()) == [(sha, path.stat().st_size)]
    store.delete(sha)
    assert not store.exists(sha) and list(store.list()) == []
    with pytest.raises(NotFound):
        list(store.read_chunks(sha, 1024))
    with pytest.raises(ValueError):
        store.exists("../../etc/passwd")


def test_filesystem_store(tmp_path):
    _exercise(FilesystemArtifactStore(tmp_path / "root"), tmp_path)


def test_s3_store_against_a_local_s3_compatible_server(tmp_path, monkeypatch):
    from moto import (
        server as server_mod,  # a dev dependency: a real S3 HTTP endpoint on loopback
    )

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        store = S3ArtifactStore("artifacts", prefix="streamrec/", endpoint_url=f"http://{host}:{port}",
                                region="us-east-1", access_key_id="test", secret_access_key="test",
                                create_bucket=True)
        _exercise(store, tmp_path)
    finally:
        server.stop()


def test_registry_configured_for_s3_registers_and_serves_downloads(tmp_path):
    from moto import (
        server as server_mod,  # a dev dependency: a real S3 HTTP endpoint on loopback
    )

    from tests.pki import registry_client
    from tests.unit.services.registry.builders import make_artifact_dir, start_registry

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        service = start_registry(tmp_path / "registry", artifact_store="s3", s3={
            "bucket": "models", "endpoint_url": f"http://{host}:{port}", "region": "us-east-1",
            "access_key_id": "test", "secret_access_key": "test", "create_bucket": True})
        try:
            src = make_artifact_dir(tmp_path / "src")
            with registry_client(service.target) as client:
                v = client.register("recommender", src, trainer_id="t")
                assert [sha for sha, _ in service.store.list()] == [v.artifact_sha256]
                out = tmp_path / "out"
                client.download("recommender", v.version, out)
                assert (out / "items.npz").read_bytes() == (src / "items.npz").read_bytes()
        finally:
            service.stop(0)
    finally:
        server.stop()
