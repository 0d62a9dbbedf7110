"""The registry's per-method authorization over real gRPC and real mutual TLS."""

from __future__ import annotations

import grpc
import pytest

from services.common.grpc import open_channel
from services.common.registry_client import RegistryClient
from streamrec_proto.v1 import registry_pb2, registry_pb2_grpc
from tests.pki import tls_for
from tests.unit.services.registry.builders import make_artifact_dir, start_registry

MODEL = "recommender"


@pytest.fixture
def registry(tmp_path):
    service = start_registry(tmp_path / "registry")
    with RegistryClient(service.target, tls=tls_for("trainer")) as trainer:
        trainer.register(MODEL, make_artifact_dir(tmp_path / "a1", hr=0.3, seed=1), trainer_id="t")
        trainer.register(MODEL, make_artifact_dir(tmp_path / "a2", hr=0.3, seed=2), trainer_id="t")
    yield service
    service.stop(0)


def client(registry, identity: str) -> RegistryClient:
    return RegistryClient(registry.target, tls=tls_for(identity))


def code_of(call) -> grpc.StatusCode:
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def test_inference_may_download_but_not_set_alias_roll_back_or_register(registry, tmp_path):
    with client(registry, "inference") as inference:
        denied = code_of(lambda: inference.set_alias(MODEL, "production", 2, reason="inference tries"))
        assert denied == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            inference.rollback(MODEL)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'inference' may not call Rollback" in err.value.details()
        assert code_of(lambda: inference.register(MODEL, make_artifact_dir(tmp_path / "a3", seed=3), trainer_id="x")) \
            == grpc.StatusCode.PERMISSION_DENIED
        assert inference.download(MODEL, 1, tmp_path / "d1").model_name == MODEL
        assert inference.get_alias(MODEL, "production").version == 1  # reads are open to every identity


def test_operator_manages_aliases_but_cannot_register_or_download(registry, tmp_path):
    with client(registry, "operator") as operator:
        assert operator.set_alias(MODEL, "production", 2, reason="operator").version == 2
        assert operator.rollback(MODEL, reason="operator").version == 1
        assert code_of(lambda: operator.download(MODEL, 1, tmp_path / "d")) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: operator.register(MODEL, make_artifact_dir(tmp_path / "a3", seed=3), trainer_id="x")) \
            == grpc.StatusCode.PERMISSION_DENIED
        assert [v.version for v in operator.list_versions(MODEL)] == [1, 2]


def test_trainer_registers_and_downloads_but_cannot_move_production(registry, tmp_path):
    with client(registry, "trainer") as trainer:
        assert code_of(lambda: trainer.set_alias(MODEL, "production", 2)) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: trainer.archive(MODEL, 2)) == grpc.StatusCode.PERMISSION_DENIED
        # The promotion gate's evidence: the trainer scores production's artifact beside each candidate.
        assert trainer.download(MODEL, 1, tmp_path / "d").model_name == MODEL


def test_an_unknown_identity_signed_by_the_ca_may_only_read(registry, tmp_path):
    with client(registry, "app") as app:
        assert app.get_version(MODEL, 1).version == 1
        assert code_of(lambda: app.set_alias(MODEL, "production", 2)) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: app.download(MODEL, 1, tmp_path / "d")) == grpc.StatusCode.PERMISSION_DENIED


def test_plaintext_set_alias_rollback_and_download_are_refused(registry):
    with open_channel(registry.target, tls_for("operator", plaintext=True)) as channel:
        stub = registry_pb2_grpc.ModelRegistryStub(channel)
        for call in (lambda: stub.SetAlias(registry_pb2.SetAliasRequest(model_name=MODEL, alias="production",
                                                                       version=2), timeout=30),
                     lambda: stub.Rollback(registry_pb2.RollbackRequest(model_name=MODEL), timeout=30),
                     lambda: list(stub.DownloadArtifact(registry_pb2.DownloadArtifactRequest(
                         model_name=MODEL, version=1), timeout=30))):
            assert code_of(call) == grpc.StatusCode.UNAVAILABLE
    with client(registry, "operator") as operator:
        assert operator.get_alias(MODEL, "production").version == 1  # nothing moved


def test_a_reason_too_long_for_an_announcement_is_refused(registry):
    with client(registry, "operator") as operator:
        with pytest.raises(grpc.RpcError) as err:
            operator.set_alias(MODEL, "production", 2, reason="x" * (1024 * 1024))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reason" in err.value.details()
        assert operator.get_alias(MODEL, "production").version == 1
