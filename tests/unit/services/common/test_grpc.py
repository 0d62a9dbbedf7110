"""The shared gRPC plumbing on a real server: error mapping, health, reflection, shutdown."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.errors import InvalidInput, NotFound
from services.common.grpc import GrpcServer, open_channel, wait_for_serving
from streamrec_proto.v1 import recommender_pb2, recommender_pb2_grpc
from tests.pki import tls_for

SERVICE = "streamrec.v1.Recommender"


class Servicer(recommender_pb2_grpc.RecommenderServicer):
    def Recommend(self, request, context):
        if request.k <= 0:
            raise InvalidInput("k must be between 1 and 1000, got %d" % request.k)
        if request.user_id == "crash":
            raise RuntimeError("secret internal detail")
        return recommender_pb2.RecommendResponse(model_name="m", model_version=1)

    def SimilarItems(self, request, context):
        raise NotFound(f"item {request.item_id!r} is not in the served model")

    def Ping(self, request, context):
        return recommender_pb2.PingResponse()


@pytest.fixture
def server():
    calls = []
    srv = GrpcServer(host="127.0.0.1", port=0, observe=lambda m, c, s: calls.append((m, c)), tls=tls_for("inference"))
    srv.add(recommender_pb2_grpc.add_RecommenderServicer_to_server, Servicer(), SERVICE)
    srv.start()
    srv.calls = calls
    yield srv
    srv.stop(0)


def test_errors_map_to_status_with_message_and_internal_hides_details(server):
    with open_channel(f"127.0.0.1:{server.port}", tls_for("app")) as ch:
        stub = recommender_pb2_grpc.RecommenderStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(recommender_pb2.RecommendRequest(user_id="u", k=0), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "k must be between" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="x", k=3), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(recommender_pb2.RecommendRequest(user_id="crash", k=3), timeout=30)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in err.value.details()
        assert stub.Recommend(recommender_pb2.RecommendRequest(user_id="u", k=3), timeout=30).model_version == 1
    assert ("Recommend", "INVALID_ARGUMENT") in server.calls
    assert ("Recommend", "INTERNAL") in server.calls
    assert ("Recommend", "OK") in server.calls


def test_health_follows_readiness_and_shutdown(server):
    target = f"127.0.0.1:{server.port}"
    with open_channel(target, tls_for("app")) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        check = lambda: health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=30).status  # noqa: E731
        assert check() == health_pb2.HealthCheckResponse.NOT_SERVING
        server.set_serving(True)
        wait_for_serving(target, SERVICE, timeout_s=60, tls=tls_for("app"))
        assert check() == health_pb2.HealthCheckResponse.SERVING
        server.set_serving(False)
        assert check() == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_the_services(server):
    with open_channel(f"127.0.0.1:{server.port}", tls_for("app")) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
