"""Transport security and limits on a real gRPC server with real TLS: who gets in, and what gets refused fast."""

from __future__ import annotations

import datetime as dt
import threading
import time

import grpc
import pytest

from services.common.grpc import GrpcServer, open_channel
from services.common.tls import LocalCA, TlsConfig
from services.inference.config import InferenceConfig
from streamrec_proto.v1 import recommender_pb2, recommender_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.pki import local_ca, tls_for

SERVICE = "streamrec.v1.Recommender"


class Recommender(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def Recommend(self, request, context):
        if request.user_id == "slow":
            self.entered.release()
            self.release.wait(30)
        return recommender_pb2.RecommendResponse(model_name="m", model_version=1)

    def Ping(self, request, context):
        return recommender_pb2.PingResponse()


def start(tls: TlsConfig, **kwargs) -> GrpcServer:
    server = GrpcServer("127.0.0.1", 0, tls=tls, **kwargs)
    server.servicer = Recommender()
    server.add(recommender_pb2_grpc.add_RecommenderServicer_to_server, server.servicer, SERVICE)
    return server.start()


@pytest.fixture
def mtls_server():
    server = start(tls_for("inference"))
    yield f"127.0.0.1:{server.port}"
    server.servicer.release.set()
    server.stop(0)


def ping(target: str, tls: TlsConfig | None = None, channel=None) -> grpc.StatusCode:
    ch = channel or open_channel(target, tls)
    try:
        recommender_pb2_grpc.RecommenderStub(ch).Ping(recommender_pb2.PingRequest(), timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        ch.close()


def test_a_certificate_signed_by_the_ca_gets_in(mtls_server):
    assert ping(mtls_server, tls_for("app")) == grpc.StatusCode.OK


def test_a_call_without_a_client_certificate_is_refused(mtls_server):
    ca = local_ca().ca_file.read_bytes()
    no_cert = grpc.secure_channel(mtls_server, grpc.ssl_channel_credentials(root_certificates=ca))
    assert ping(mtls_server, channel=no_cert) == grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_call_to_a_tls_server_is_refused(mtls_server):
    assert ping(mtls_server, TlsConfig(plaintext=True)) == grpc.StatusCode.UNAVAILABLE


def test_an_expired_certificate_is_refused(mtls_server):
    ca = local_ca()
    ca.issue("app", not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10), days=1,
             file_stem="app-expired")
    expired = TlsConfig(ca_file=str(ca.ca_file), cert_file=str(ca.directory / "app-expired.crt"),
                        key_file=str(ca.directory / "app-expired.key"))
    assert ping(mtls_server, expired) == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_signed_by_another_ca_is_refused(mtls_server, tmp_path):
    other = LocalCA(tmp_path / "other-ca", name="somebody else's CA")
    other.issue("operator")  # the right name, the wrong signer
    forged = TlsConfig(ca_file=str(local_ca().ca_file), cert_file=str(other.directory / "operator.crt"),
                       key_file=str(other.directory / "operator.key"))
    assert ping(mtls_server, forged) == grpc.StatusCode.UNAVAILABLE


def test_a_server_certificate_from_another_ca_is_not_trusted(tmp_path):
    other = LocalCA(tmp_path / "other-ca")
    server = start(other.tls_config("inference"))
    try:
        assert ping(f"127.0.0.1:{server.port}", tls_for("app")) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


def test_tls_without_client_certificates_takes_bearer_tokens(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret-app-token\n")
    server = start(tls_for("inference", client_auth="none", tokens_file=str(tokens)))
    target = f"127.0.0.1:{server.port}"
    ca = str(local_ca().ca_file)
    try:
        (tmp_path / "good").write_text("s3cret-app-token")
        (tmp_path / "bad").write_text("guess")
        # An app holding only the CA and a token: no certificate of its own.
        assert ping(target, TlsConfig(ca_file=ca, token_file=str(tmp_path / "good"))) == grpc.StatusCode.OK
        assert ping(target, TlsConfig(ca_file=ca, token_file=str(tmp_path / "bad"))) == grpc.StatusCode.UNAUTHENTICATED
        no_token = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read()))
        assert ping(target, channel=no_token) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(0)


def test_an_8_mib_recommend_request_is_refused_fast_and_the_server_keeps_serving():
    g = InferenceConfig().grpc  # the inference service's own limits
    server = start(tls_for("inference"), max_message_bytes=g.max_message_bytes)
    target = f"127.0.0.1:{server.port}"
    try:
        with open_channel(target, tls_for("app")) as ch:
            stub = recommender_pb2_grpc.RecommenderStub(ch)
            huge = recommender_pb2.RecommendRequest(user_id="u", k=10, exclude_item_ids=["x" * 1024] * 8192)
            assert huge.ByteSize() >= 8 * 1024 * 1024
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                stub.Recommend(huge, timeout=30)
            assert err.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
            assert time.monotonic() - started < 10
            for _ in range(3):
                assert stub.Recommend(recommender_pb2.RecommendRequest(user_id="u", k=10), timeout=30).model_version == 1
    finally:
        server.stop(0)


def test_calls_beyond_the_concurrency_bound_get_resource_exhausted_at_once():
    server = start(tls_for("inference"), max_workers=2, max_concurrent_rpcs=2)
    target = f"127.0.0.1:{server.port}"
    try:
        with open_channel(target, tls_for("app")) as ch:
            stub = recommender_pb2_grpc.RecommenderStub(ch)
            busy = [stub.Recommend.future(recommender_pb2.RecommendRequest(user_id="slow", k=1), timeout=60)
                    for _ in range(2)]
            for _ in busy:
                assert server.servicer.entered.acquire(timeout=30)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                stub.Recommend(recommender_pb2.RecommendRequest(user_id="u", k=1), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - started < 10
            server.servicer.release.set()
            assert all(f.result(30).model_version == 1 for f in busy)
            assert stub.Recommend(recommender_pb2.RecommendRequest(user_id="u", k=1), timeout=30).model_version == 1
    finally:
        server.servicer.release.set()
        server.stop(0)


class StalledUploads(registry_pb2_grpc.ModelRegistryServicer):
    def RegisterVersion(self, request_iterator, context):
        for _ in request_iterator:
            pass
        return registry_pb2.ModelVersion(version=1)


def test_a_stalled_stream_without_a_deadline_is_cut_off_by_the_server_default():
    server = GrpcServer("127.0.0.1", 0, tls=tls_for("registry"), default_deadline_s=1.0)
    server.add(registry_pb2_grpc.add_ModelRegistryServicer_to_server, StalledUploads(), "streamrec.v1.ModelRegistry")
    server.start()
    stalled = threading.Event()

    def requests():
        yield registry_pb2.RegisterVersionRequest(header=registry_pb2.RegisterHeader(model_name="m"))
        stalled.wait(60)  # and never sends the rest

    try:
        with open_channel(f"127.0.0.1:{server.port}", tls_for("trainer")) as ch:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                registry_pb2_grpc.ModelRegistryStub(ch).RegisterVersion(requests())  # no deadline of its own
            assert err.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
            assert time.monotonic() - started < 20
    finally:
        stalled.set()
        server.stop(0)


def test_plaintext_must_be_asked_for_and_is_logged(caplog):
    with pytest.raises(Exception, match="tls.ca_file is not set"):
        GrpcServer("127.0.0.1", 0, tls=TlsConfig())
    server = GrpcServer("127.0.0.1", 0, tls=TlsConfig(plaintext=True))
    try:
        assert any("without TLS" in r.getMessage() for r in caplog.records)
    finally:
        server.stop(0)


def test_a_server_name_override_is_checked_against_the_servers_certificate(mtls_server):
    # As through a port-forward: the certificate names the service, the target is localhost.
    assert ping(mtls_server, tls_for("app", server_name="inference")) == grpc.StatusCode.OK
    assert ping(mtls_server, tls_for("app", server_name="somebody-else")) == grpc.StatusCode.UNAVAILABLE
