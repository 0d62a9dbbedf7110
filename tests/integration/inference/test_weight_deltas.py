"""Weight deltas through the real registry into a real inference server: applied between full versions,
refused when they do not fit the version served."""

from __future__ import annotations

import time

import pytest

from services.common.grpc import open_channel
from streamrec_proto.v1 import recommender_pb2, recommender_pb2_grpc
from tests.pki import tls_for
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    """A base artifact, the delta of more training against it, and the full artifact of that state (and a delta
    of that full artifact's own state)."""
    from recmodel.artifact import verify_artifact
    from recmodel.data import SyntheticStream
    from recmodel.delta import DeltaBase, build_delta
    from recmodel.export import export_artifact
    from recmodel.text import HashingTextEncoder
    from recmodel.train import IncrementalTrainer

    root = tmp_path_factory.mktemp("deltas")
    stream = SyntheticStream(seed=5, n_users=100, n_items=250, n_events=1200)
    events = list(stream.events())
    trainer = IncrementalTrainer(dim=16, max_len=10, capacity=1000, text_encoder=HashingTextEncoder(16),
                                 device="cpu", seed=0, batch_size=256, n_random_negatives=32, n_layers=1)
    trainer.upsert_items(stream.items())
    trainer.train_events(events)
    offsets = {"t": {"0": 1200}}
    export_artifact(trainer, root / "base", model_name="recommender", training_offsets=offsets, metrics={"hr@10": 0.1})
    base = DeltaBase.from_artifact(root / "base", verify_artifact(root / "base"))
    # More training that leaves the histories as they are (idle replay), so the two versions' snapshots give
    # the user the same history and their answers can be compared.
    trainer.replay(60)
    data, _ = build_delta(trainer, base)
    export_artifact(trainer, root / "full", model_name="recommender", training_offsets={"t": {"0": 2400}},
                    metrics={"hr@10": 0.1})
    # A delta of the full artifact's own state (only its encoder: no row moved since).
    same, _ = build_delta(trainer, DeltaBase.from_artifact(root / "full", verify_artifact(root / "full")))
    return {"base": root / "base", "full": root / "full", "delta": data, "delta_of_full": same}


def _register(client, path) -> int:
    mv = client.register("recommender", path, trainer_id="test", auto_promote=False)
    client.set_alias("recommender", "production", mv.version, reason="test")
    return mv.version


def _ship(client, version: int, payload: bytes, offset: int = 2400) -> int:
    return client.register_delta("recommender", version, payload, {"t": {0: offset}},
                                 created_at_ms=int(time.time() * 1000), newest_event_ms=0).sequence


def _recommend(server, user: str):
    with open_channel(server.target, tls_for("app")) as channel:
        return recommender_pb2_grpc.RecommenderStub(channel).Recommend(
            recommender_pb2.RecommendRequest(user_id=user, k=10), timeout=30)


def _serving_base(make_inference, registry_client, rounds):
    """An inference server polling deltas every 0.1 s, serving the base round as v1: (server, v1, a user)."""
    server = make_inference(delta_poll_s=0.1)
    v1 = _register(registry_client, rounds["base"])
    server.wait_ready(60)
    return server, v1, sorted(server.repository.get().history_snapshot)[0]


def test_a_delta_of_the_production_version_is_served_as_the_full_version_of_that_state_would_be(
        rounds, registry_client, make_inference):
    server, v1, user = _serving_base(make_inference, registry_client, rounds)
    before = _recommend(server, user)
    assert (before.model_version, before.model_delta) == (v1, 0)

    seq = _ship(registry_client, v1, rounds["delta"])
    wait_for(lambda: _recommend(server, user).model_delta == seq, 60, "the delta to be served")
    patched = _recommend(server, user)
    assert patched.model_version == v1
    assert server.repository.get().offsets_for("t") == {0: 2400}  # what the delta was trained on

    v2 = _register(registry_client, rounds["full"])
    wait_for(lambda: _recommend(server, user).model_version == v2, 60, "the full version to be served")
    full = _recommend(server, user)
    assert full.model_delta == 0
    assert [i.item_id for i in patched.items] == [i.item_id for i in full.items]
    assert [i.score for i in patched.items] == pytest.approx([i.score for i in full.items], abs=1e-4)
    assert [i.item_id for i in before.items] != [i.item_id for i in full.items], "the delta changed the answer"
    assert server.metrics.deltas_applied._value.get() == 1


def test_a_delta_that_does_not_fit_the_version_served_is_refused_and_a_later_one_applies(
        rounds, registry_client, make_inference):
    server = make_inference(delta_poll_s=0.1)
    _register(registry_client, rounds["base"])
    v2 = _register(registry_client, rounds["full"])
    server.wait_ready(60)
    wait_for(lambda: server.repository.get().version == v2, 60, "version 2 to be served")
    user = sorted(server.repository.get().history_snapshot)[0]

    # The delta of the base's item table, registered as if for version 2 (whose table differs): refused.
    wrong = _ship(registry_client, v2, rounds["delta"])
    wait_for(lambda: server.metrics.delta_failures._value.get() >= 1, 60, "the mismatched delta to be refused")
    # Bytes that are no delta at all, with a correct digest: refused too, and the server keeps answering.
    garbage = b"\x00" * 4096  # the registry checks the digest, not what the bytes are
    _ship(registry_client, v2, garbage)
    wait_for(lambda: server.metrics.delta_failures._value.get() >= 2, 60, "the garbage delta to be refused")
    answer = _recommend(server, user)
    assert (answer.model_version, answer.model_delta) == (v2, 0) and len(answer.items) == 10
    assert wrong > 0 and server.metrics.deltas_applied._value.get() == 0
    good = _ship(registry_client, v2, rounds["delta_of_full"])
    wait_for(lambda: _recommend(server, user).model_delta == good, 60, "the delta made for version 2 to be served")
    assert server.metrics.deltas_applied._value.get() == 1


def test_when_the_gate_rejects_a_newer_version_the_deltas_served_are_dropped_and_no_more_apply(
        rounds, registry_client, make_inference, tmp_path):
    from tests.unit.services.registry.builders import make_artifact_dir, paired_evidence

    server, v1, user = _serving_base(make_inference, registry_client, rounds)
    seq = _ship(registry_client, v1, rounds["delta"])
    wait_for(lambda: _recommend(server, user).model_delta == seq, 60, "the delta to be served")

    # The trainer's next version is worse than v1 beyond noise: the weights the deltas of v1 carried are suspect.
    worse = registry_client.register("recommender", make_artifact_dir(tmp_path / "worse", gate=paired_evidence(
        v1, 0.20, 0.30, n=700)), trainer_id="test", auto_promote=True)
    assert worse.gate_decision == "rejected"
    wait_for(lambda: _recommend(server, user).model_delta == 0, 60, "the version as registered to be served again")
    answer = _recommend(server, user)
    assert answer.model_version == v1 and len(answer.items) == 10
    # A later delta of v1 is not applied any more (the trainer's next deltas are of the rejected version).
    _ship(registry_client, v1, rounds["delta"])
    assert server.deltas.poll_once() is False
    assert _recommend(server, user).model_delta == 0


def _encoder_that_fails_when_run() -> bytes:
    """An ONNX model with the user encoder's inputs that loads, but wants float64 vectors, so every run fails."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("item_vectors", TensorProto.DOUBLE, ["b", 10, 16]),
              helper.make_tensor_value_info("event_types", TensorProto.INT64, ["b", 10]),
              helper.make_tensor_value_info("gap_buckets", TensorProto.INT64, ["b", 10]),
              helper.make_tensor_value_info("mask", TensorProto.BOOL, ["b", 10])]
    out = helper.make_tensor_value_info("user_vector", TensorProto.DOUBLE, ["b", 16])
    graph = helper.make_graph([helper.make_node("ReduceMean", ["item_vectors"], ["user_vector"], axes=[1], keepdims=0)],
                              "fails", inputs, [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_a_delta_whose_encoder_fails_at_warm_up_is_refused_and_the_server_stays_serving(
        rounds, registry_client, make_inference):
    import io

    import numpy as np
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server, v1, user = _serving_base(make_inference, registry_client, rounds)
    with np.load(io.BytesIO(rounds["delta"]), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["encoder"] = np.frombuffer(_encoder_that_fails_when_run(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _ship(registry_client, v1, buf.getvalue())
    wait_for(lambda: server.metrics.delta_failures._value.get() >= 1, 60, "the delta to be refused")
    # Refused once, not retried: the loop stays healthy and the server SERVING, answering with v1 as registered.
    good = _ship(registry_client, v1, rounds["delta"])
    wait_for(lambda: _recommend(server, user).model_delta == good, 60, "the next delta to be served")
    assert server.metrics.delta_failures._value.get() == 1
    with open_channel(server.target, tls_for("app")) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30).status
    assert status == health_pb2.HealthCheckResponse.SERVING
