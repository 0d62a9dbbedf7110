"""Fixtures: small real artifacts (built once), a real registry, an inference server on both."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """Three real artifacts of successive training rounds on one synthetic stream, plus a corrupt one."""
    from recmodel.data import SyntheticStream
    from recmodel.export import export_artifact
    from recmodel.text import HashingTextEncoder
    from recmodel.train import IncrementalTrainer

    root = tmp_path_factory.mktemp("artifacts")
    stream = SyntheticStream(seed=3, n_users=120, n_items=300, n_events=3000)
    events = list(stream.events())
    trainer = IncrementalTrainer(dim=16, max_len=10, capacity=1000, text_encoder=HashingTextEncoder(16),
                                 device="cpu", seed=0, batch_size=256, n_random_negatives=32, n_layers=1)
    trainer.upsert_items(stream.items())
    out = []
    for n, chunk in enumerate((events[:1000], events[1000:2000], events[2000:]), 1):
        trainer.train_events(chunk)
        export_artifact(trainer, root / f"v{n}", model_name="recommender", training_offsets={}, metrics={"hr@10": 0.1})
        out.append(root / f"v{n}")
    corrupt = root / "corrupt"
    shutil.copytree(out[0], corrupt)
    onnx = corrupt / "user_encoder.onnx"
    onnx.write_bytes(b"this is not an ONNX model" * 100)
    manifest = json.loads((corrupt / "manifest.json").read_text())
    manifest["files"]["user_encoder.onnx"] = hashlib.sha256(onnx.read_bytes()).hexdigest()
    (corrupt / "manifest.json").write_text(json.dumps(manifest))
    return {"versions": out, "corrupt": corrupt}


@pytest.fixture
def registry_client(registry):
    from tests.pki import registry_client as lifecycle_client

    client = lifecycle_client(registry.target)
    yield client
    client.close()


@pytest.fixture
def make_inference(tmp_path, kafka_config, registry):
    from services.inference.config import InferenceConfig
    from services.inference.service import InferenceService
    from tests.pki import tls_section

    started = []

    def make(**inference) -> InferenceService:
        config = InferenceConfig.model_validate({
            "kafka": kafka_config.model_dump(),
            "tls": tls_section("inference"),
            "metrics": {"host": "127.0.0.1", "port": 0},
            "grpc": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
            "inference": {"registry_target": registry.target, "cache_dir": str(tmp_path / "cache"),
                          "warmup_requests": 2, **inference},
        })
        server = InferenceService(config).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop(0)
