"""The GPU paths: training on CUDA, moving a checkpoint between CUDA and CPU, exporting a CUDA-trained
model to ONNX, NCCL data parallelism and onnxruntime's CUDA provider. Skipped where there is no GPU."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from conftest import SMALL_TRAINER

from recmodel.export import export_artifact
from recmodel.serving import ArtifactModel, select_providers
from recmodel.text import HashingTextEncoder
from recmodel.train import IncrementalTrainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_trained(small_stream) -> IncrementalTrainer:
    trainer = IncrementalTrainer(**SMALL_TRAINER, text_encoder=HashingTextEncoder(48), device="cuda")
    trainer.upsert_items(small_stream.items())
    trainer.train_events(list(small_stream.events()))
    return trainer


def _histories(trainer, n=32):
    users = list(trainer.user_histories())[:n]
    hist = [trainer.user_histories()[u] for u in users]
    return hist, [h[-1][2] + 1000 for h in hist]


def test_training_on_cuda_keeps_every_tensor_on_the_gpu_and_learns(cuda_trained, small_stream):
    assert cuda_trained.device.type == "cuda"
    assert {p.device.type for p in cuda_trained.model.parameters()} == {"cuda"}
    hits = total = 0
    for user in list(cuda_trained.user_histories())[:40]:
        recs = cuda_trained.recommend(user, k=10)
        taste = small_stream.user_taste(user, final=True) | small_stream.user_taste(user)
        hits += sum(bool(small_stream.item_categories(i) & taste) for i, _ in recs)
        total += len(recs)
    assert hits / total > 0.6  # chance is about 2/6 categories


def test_a_cuda_checkpoint_restores_on_cpu_and_back(cuda_trained, tmp_path, small_stream):
    path = cuda_trained.save_checkpoint(tmp_path / "ckpt.pt")
    hist, nows = _histories(cuda_trained)
    ids = cuda_trained.item_ids
    on_cpu, _ = IncrementalTrainer.load_checkpoint(path, device="cpu")
    assert {p.device.type for p in on_cpu.model.parameters()} == {"cpu"}
    np.testing.assert_allclose(on_cpu.score(hist, nows, ids), cuda_trained.score(hist, nows, ids), atol=1e-4)
    # Training goes on from the CPU copy, and its checkpoint loads back onto the GPU.
    on_cpu.train_events(list(small_stream.events())[:300])
    back, _ = IncrementalTrainer.load_checkpoint(on_cpu.save_checkpoint(tmp_path / "cpu.pt"), device="cuda")
    np.testing.assert_allclose(back.score(hist, nows, ids), on_cpu.score(hist, nows, ids), atol=1e-4)
    back.train_events(list(small_stream.events())[300:600])  # optimizer state and RNG live on the GPU again
    assert back.events_trained == on_cpu.events_trained + 300


def test_a_cuda_trained_model_exports_to_onnx_that_matches_it(cuda_trained, tmp_path):
    export_artifact(cuda_trained, tmp_path / "a", model_name="gpu", training_offsets={}, metrics={})
    served = ArtifactModel.load(tmp_path / "a", providers=["CPUExecutionProvider"])
    hist, nows = _histories(cuda_trained)
    np.testing.assert_allclose(served.encode(hist, nows), cuda_trained.user_vectors(hist, nows), atol=1e-4)
    for h, now in list(zip(hist, nows))[:10]:
        assert [i for i, _ in served.recommend(h, k=10, now_ms=now)] == [
            i for i, _ in cuda_trained.recommend(h, k=10, now_ms=now)]


@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
                    reason="this onnxruntime build has no CUDA provider")
def test_onnxruntime_on_the_gpu_matches_the_cpu_session(cuda_trained, tmp_path):
    export_artifact(cuda_trained, tmp_path / "a", model_name="gpu", training_offsets={}, metrics={})
    gpu = ArtifactModel.load(tmp_path / "a", providers=select_providers(trt_engine_cache_dir=str(tmp_path / "trt")))
    cpu = ArtifactModel.load(tmp_path / "a", providers=["CPUExecutionProvider"])
    assert gpu.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    hist, nows = _histories(cuda_trained)
    cos = np.sum(gpu.encode(hist, nows) * cpu.encode(hist, nows), axis=1)
    assert cos.min() > 0.999  # TensorRT runs fp16


def test_nccl_data_parallel_step_on_one_gpu(small_stream):
    import torch.distributed as dist

    from services.trainer.distributed import DataParallelTrainer

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        trainer = DataParallelTrainer(**{**SMALL_TRAINER, "text_encoder": HashingTextEncoder(48), "device": "cuda"})
        trainer.upsert_items(small_stream.items())
        stats = trainer.train_events(list(small_stream.events())[:1000])
        assert trainer._comm_device().type == "cuda"
        assert stats.steps > 0 and np.isfinite(stats.loss)
        assert {p.device.type for p in trainer.model.parameters()} == {"cuda"}
    finally:
        dist.destroy_process_group()
