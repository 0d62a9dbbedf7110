"""A forged model-versions record does not change what inference serves, nor pin it to a version."""

from __future__ import annotations

import urllib.request

import pytest

from services.common.kafka import CONTENT_TYPE_HEADER, PROTOBUF, make_producer
from streamrec_proto.v1 import registry_pb2
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "recommender"


def _forge(kafka_config, version: int, sequence: int) -> None:
    """Write a record naming ``version`` as production straight to the topic, as anyone with topic access could."""
    event = registry_pb2.ModelVersionEvent(model_name=MODEL, action="promoted", version=version,
                                           aliases={"production": version}, sequence=sequence, reason="forged")
    producer = make_producer(kafka_config)
    try:
        producer.send(kafka_config.topics.name("model_versions"), key=MODEL.encode(),
                      value=event.SerializeToString(), headers=[(CONTENT_TYPE_HEADER, PROTOBUF.encode())]).get(30)
    finally:
        producer.close()


def test_a_forged_record_is_ignored_and_later_real_promotions_still_apply(artifacts, registry_client,
                                                                         make_inference, kafka_config):
    server = make_inference()
    v1 = registry_client.register(MODEL, artifacts["versions"][0], trainer_id="test", auto_promote=False).version
    registry_client.set_alias(MODEL, "production", v1, reason="test")
    v2 = registry_client.register(MODEL, artifacts["versions"][1], trainer_id="test", auto_promote=False).version
    server.wait_ready(120)
    wait_for(lambda: server.repository.get().version == v1, 60, "v1 served")

    # Points production at v2 (which exists, unpromoted) with a sequence far above anything real.
    _forge(kafka_config, v2, sequence=2**62)
    metrics = f"http://127.0.0.1:{server.metrics_server.port}/metrics"

    def mismatches() -> float:
        for line in urllib.request.urlopen(metrics, timeout=30).read().decode().splitlines():
            if line.startswith("streamrec_inference_announcement_mismatches_total "):
                return float(line.split()[1])
        return 0.0

    wait_for(lambda: mismatches() >= 1, 120, "the forged record to be checked")
    assert server.repository.get().version == v1  # what is served did not change

    # A real promotion, announced with a far lower sequence than the forgery, still takes effect.
    registry_client.set_alias(MODEL, "production", v2, reason="real")
    wait_for(lambda: server.repository.get().version == v2, 120, "the real promotion to be served")
