"""`streamrec recommend` against a real gRPC server running the inference servicer."""

from __future__ import annotations

import numpy as np
import pytest

from services.cli import recommend
from services.common.grpc import GrpcServer
from services.inference.dataplane import RecommenderDataPlane
from services.inference.histories import UserHistoryStore
from services.inference.served_model import ItemTableModel, ServedModel
from services.inference.repository import PRODUCTION, ModelRepository
from services.inference.servicer import RecommenderServicer
from tests.pki import local_ca, tls_for


class MeanEncoder:
    def __init__(self, vectors):
        self.vectors = vectors

    def encode(self, histories, now_ms):
        return np.stack([self.vectors[[int(h[0][1:]) for h in hist]].mean(axis=0) for hist in histories])


@pytest.fixture
def server():
    vectors = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    runtime = ItemTableModel(name="recommender", encoder=MeanEncoder(vectors), item_ids=[f"i{j}" for j in range(50)],
                             item_vectors=vectors, titles=[f"Title {j}" for j in range(50)])
    model = ServedModel(runtime, version=7)
    model.warm_up(1)
    repo = ModelRepository()
    repo.swap(PRODUCTION, model)
    store = UserHistoryStore()
    store.append("alice", "i1", "click", 1)
    srv = GrpcServer("127.0.0.1", 0, tls=tls_for("inference"))
    RecommenderServicer(RecommenderDataPlane(repo, store)).register(srv)
    srv.start()
    yield f"127.0.0.1:{srv.port}"
    srv.stop(0)


def test_prints_a_table_with_item_title_score_and_version(server, capsys):
    assert recommend.main(["alice", "--k", "3", "--target", server, "--tls-dir", str(local_ca().directory)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["#", "item", "title", "score"]
    assert len(out) == 2 + 3 + 1
    assert "Title" in out[2] and "recommender v7" in out[-1] and "model" in out[-1]


def test_invalid_k_is_reported_not_raised(server, capsys):
    assert recommend.main(["alice", "--k", "0", "--target", server, "--tls-dir", str(local_ca().directory)]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
