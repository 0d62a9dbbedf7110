"""RegistryClient against a real registry server: upload, download with verification, alias calls, errors."""

from __future__ import annotations

import grpc
import pytest

from recmodel.artifact import read_manifest
from services.common.errors import DataLoss
from tests.pki import registry_client
from tests.unit.services.registry.builders import make_artifact_dir, start_registry


@pytest.fixture
def server(tmp_path):
    service = start_registry(tmp_path / "registry")
    yield service
    service.stop(0)


def test_register_and_download_round_trip(server, tmp_path):
    src = make_artifact_dir(tmp_path / "src", hr=0.25, seed=3)
    with registry_client(server.target, chunk_bytes=1024) as client:  # many small chunks
        v = client.register("recommender", src, trainer_id="trainer-a", parent_version=0)
        assert (v.version, v.trainer_id, v.state) == (1, "trainer-a", "active")
        assert v.manifest_json == (src / "manifest.json").read_text()
        out = tmp_path / "dest" / "v1"
        manifest = client.download("recommender", 1, out)
        assert manifest.to_json() == read_manifest(src).to_json()
        for f in src.iterdir():
            assert (out / f.name).read_bytes() == f.read_bytes()
        assert client.get_alias("recommender", "production").version == 1
        assert [x.version for x in client.list_versions("recommender")] == [1]


def test_download_of_corrupted_stored_bytes_raises_data_loss(server, tmp_path):
    with registry_client(server.target) as client:
        v = client.register("recommender", make_artifact_dir(tmp_path / "src"), trainer_id="t")
        stored = next((tmp_path / "registry" / "artifacts").rglob(f"{v.artifact_sha256}.tar"))
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF
        stored.write_bytes(bytes(data))
        with pytest.raises(DataLoss, match="sha256"):
            client.download("recommender", v.version, tmp_path / "dest")
        assert not (tmp_path / "dest").exists()
        assert not list(tmp_path.glob(".download-*"))


def test_server_errors_surface_as_rpc_errors(server, tmp_path):
    with registry_client(server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.get_version("recommender", 7)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        client.register("recommender", make_artifact_dir(tmp_path / "a"), trainer_id="t")
        with pytest.raises(grpc.RpcError) as err:
            client.rollback("recommender")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:
            client.set_alias("recommender", "Bad Alias", 1)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
