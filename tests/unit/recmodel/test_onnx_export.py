"""The exported artifact, run by ONNX Runtime, must agree with PyTorch."""

import json
from pathlib import Path

import numpy as np
import pytest

from recmodel.artifact import read_manifest, verify_artifact
from recmodel.export import export_artifact
from recmodel.serving import ArtifactModel, provider_names, select_providers

OFFSETS = {"streamrec.events": {0: 1200, 1: 1300}}


@pytest.fixture(scope="module")
def artifact_dir(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifact")
    export_artifact(trained, out, model_name="demo", training_offsets=OFFSETS, metrics={"hr@10": 0.5}, int8=True)
    return out


@pytest.fixture(scope="module")
def served(artifact_dir):
    return ArtifactModel.load(artifact_dir, providers=["CPUExecutionProvider"])


def _random_histories(trained, rng, n):
    ids = trained.item_ids
    types = ["view", "click", "purchase", "dislike", "mystery-type"]
    out, nows = [], []
    for _ in range(n):
        length = int(rng.integers(1, trained.max_len + 8))
        ts = np.cumsum(rng.integers(1, 10**7, length)) + 1_700_000_000_000
        out.append([(ids[int(rng.integers(len(ids)))], types[int(rng.integers(len(types)))], int(t)) for t in ts])
        nows.append(int(ts[-1] + rng.integers(0, 10**8)))
    return out, nows


def test_manifest_lists_every_file_with_offsets_and_model_info(artifact_dir):
    manifest = verify_artifact(artifact_dir)
    assert set(manifest.files) == {"user_encoder.onnx", "user_encoder.int8.onnx", "items.npz", "histories.json", "transitions.npz"}
    assert manifest.training_offsets == {"streamrec.events": {"0": 1200, "1": 1300}}
    assert manifest.model_name == "demo" and manifest.version == 0 and manifest.dim == 32 and manifest.max_len == 12
    assert "view" in manifest.event_types and manifest.metrics == {"hr@10": 0.5}
    assert read_manifest(artifact_dir) == manifest


def test_onnx_runtime_matches_pytorch_on_random_histories(trained, served):
    rng = np.random.default_rng(0)
    histories, nows = _random_histories(trained, rng, 64)
    torch_vecs = trained.user_vectors(histories, nows)
    ort_vecs = served.encode(histories, nows)
    assert ort_vecs.shape == (64, trained.dim)
    np.testing.assert_allclose(ort_vecs, torch_vecs, atol=1e-4)
    np.testing.assert_allclose(served.item_vectors, trained.item_vectors(list(served.item_ids)), atol=0)
    for hist, now in list(zip(histories, nows))[:20]:
        assert [i for i, _ in served.recommend(hist, k=10, now_ms=now)] == [
            i for i, _ in trained.recommend(hist, k=10, now_ms=now)
        ]


def test_batch_of_one_equals_row_of_a_batch_and_unknown_items_are_skipped(served, trained):
    hist = trained.user_histories()[next(iter(trained.user_histories()))]
    with_unknown = hist[:3] + [("never-seen", "click", hist[3][2])] + hist[3:]
    now = hist[-1][2] + 1000
    alone = served.encode([hist], now)
    np.testing.assert_allclose(served.encode([with_unknown], now), alone, atol=1e-6)
    np.testing.assert_allclose(served.encode([hist, hist[:2]], [now, now])[0], alone[0], atol=1e-5)


def test_histories_snapshot_and_item_table(served, trained):
    assert served.histories == trained.user_histories()
    assert list(served.item_ids) == trained.item_ids
    assert served.item_index[str(served.item_ids[5])] == 5
    assert served.providers == ["CPUExecutionProvider"]


def test_int8_variant_stays_close(artifact_dir, served, trained):
    int8 = ArtifactModel.load(artifact_dir, providers=["CPUExecutionProvider"], encoder_file="user_encoder.int8.onnx")
    histories, nows = _random_histories(trained, np.random.default_rng(1), 32)
    cos = np.sum(int8.encode(histories, nows) * served.encode(histories, nows), axis=1)
    assert cos.min() > 0.95


def test_provider_preference_is_tensorrt_then_cuda_then_cpu():
    chosen = select_providers(["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"],
                              trt_engine_cache_dir="/tmp/trt")
    assert provider_names(chosen) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chosen[0][1]["trt_fp16_enable"] and chosen[0][1]["trt_engine_cache_path"] == "/tmp/trt"
    assert select_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_the_default_gpu_is_not_named_so_onnxruntime_does_not_warn_at_every_session():
    # onnxruntime-gpu 1.26+ warns "No registered plugin EP device found" for every session whose CUDA or
    # TensorRT options carry a device_id; inference creates one per model version and weight delta.
    both = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    trt, cuda, _ = select_providers(both)
    assert "device_id" not in trt[1] and cuda == ("CUDAExecutionProvider", {})
    trt, cuda, _ = select_providers(both, device_id=1)
    assert trt[1]["device_id"] == 1 and cuda == ("CUDAExecutionProvider", {"device_id": 1})


def test_a_tensorrt_provider_without_tensorrt_installed_is_skipped_with_a_warning(monkeypatch, caplog):
    import onnxruntime as ort

    import recmodel.serving as serving

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(serving, "_logged_choice", None)
    monkeypatch.setattr(serving, "TENSORRT_RUNTIME", ("libstreamrec-no-such-tensorrt.so.10",))
    with caplog.at_level("WARNING", logger="recmodel.serving"):
        chosen = select_providers()
    assert provider_names(chosen) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    skipped = [r for r in caplog.records if r.getMessage() == "onnxruntime execution provider skipped"]
    assert skipped and "libstreamrec-no-such-tensorrt.so.10 not found" in skipped[0].reason


def test_tensorrt_is_found_in_the_tensorrt_libs_package_of_the_wheels(monkeypatch, tmp_path):
    import shutil
    import sys

    import recmodel.serving as serving

    # zlib stands in for TensorRT's library: what is checked is where it is looked for.
    found = [p for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib")
             if (p := Path(d) / "libz.so.1").exists()]
    if not found:
        pytest.skip("no libz.so.1 to stand in for TensorRT's library")
    real = found[0]
    package = tmp_path / "tensorrt_libs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(real, package / "libstreamrec-test-nvinfer.so.10")
    monkeypatch.setattr(serving, "TENSORRT_RUNTIME", ("libstreamrec-test-nvinfer.so.10",))
    assert serving._load_tensorrt_runtime() is not None  # not on the loader's path
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert serving._load_tensorrt_runtime() is None


def test_export_refuses_a_non_empty_directory(trained, tmp_path):
    (tmp_path / "stale.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_artifact(trained, tmp_path, model_name="demo", training_offsets={}, metrics={})


def test_the_artifact_keeps_only_the_most_recently_active_users_histories(trained, tmp_path):
    histories = trained.user_histories()
    export_artifact(trained, tmp_path / "a", model_name="demo", max_history_users=5)
    kept = json.loads((tmp_path / "a" / "histories.json").read_text())
    last = {u: h[-1][2] if h else 0 for u, h in histories.items()}
    assert len(histories) > 5 and len(kept) == 5
    assert min(last[u] for u in kept) >= max(last[u] for u in histories if u not in kept)


def test_a_large_catalog_ships_its_ivf_quantizer_and_a_served_model_indexes_with_it(trained, tmp_path):
    from recmodel.ivf import auto_nlist
    from recmodel.serving import ArtifactModel
    from services.inference.config import IndexConfig
    from services.inference.served_model import ServedModel

    small = export_artifact(trained, tmp_path / "small", model_name="demo")
    assert "ivf.npz" not in small.files  # below ivf_min_items servers search exactly: nothing to ship

    manifest = export_artifact(trained, tmp_path / "big", model_name="demo", ivf_min_items=10)
    assert "ivf.npz" in manifest.files
    runtime = ArtifactModel.load(tmp_path / "big", providers=["CPUExecutionProvider"])
    centroids, lists = runtime.ivf
    n_available = int(runtime.available.sum())
    assert centroids.shape == (auto_nlist(n_available), runtime.dim) and lists.shape == (len(runtime.item_ids),)
    served = ServedModel(runtime, index_config=IndexConfig(ann_threshold=10, nprobe_fraction=1.0))
    assert served.index_kind == "ivf"
    query = runtime.item_vectors[0]
    exact = ServedModel(runtime, index_config=IndexConfig(ann_threshold=10**9))
    assert served.retriever.search(query, 5)[0].tolist() == exact.retriever.search(query, 5)[0].tolist()


def test_the_transition_top_travels_in_the_manifest_and_a_bad_one_is_refused(artifact_dir, served, trained, tmp_path):
    import shutil

    from recmodel.artifact import ArtifactError

    assert trained.transition_top > 0
    assert read_manifest(artifact_dir).extra["transitions"]["top"] == trained.transition_top == served.transitions.top
    for bad in (-1, "many"):
        copy = tmp_path / f"bad-{bad}"
        shutil.copytree(artifact_dir, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["extra"]["transitions"]["top"] = bad
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match="transitions"):
            ArtifactModel.load(copy, providers=["CPUExecutionProvider"])


def test_score_ranks_any_list_of_items_and_keeps_the_rows_of_a_catalogue_tuple(served, trained):
    rng = np.random.default_rng(5)
    histories, _ = _random_histories(trained, rng, 3)
    assert served.transitions is not None and served.transition_weight > 0, "the bonus is part of what is compared"
    ids = [str(i) for i in served.item_ids.tolist()]
    catalogue = tuple(ids)
    first = served.score(histories, 10**13, catalogue)
    assert served.score(histories, 10**13, catalogue) is not first  # a fresh matrix, from the kept rows
    np.testing.assert_array_equal(served.score(histories, 10**13, catalogue), first)
    # Another list (reversed, with an unknown item) is looked up afresh: a kept tuple never stands for it.
    other = tuple(reversed(ids)) + ("not-an-item",)
    scores = served.score(histories, 10**13, other)
    np.testing.assert_array_equal(scores[:, :-1], first[:, ::-1])
    assert np.all(scores[:, -1] == -np.inf)
    np.testing.assert_array_equal(served.score(histories, 10**13, ids[::-1]), first[:, ::-1])


def _onnx_vectors(data: bytes, trainer, rng) -> tuple[np.ndarray, np.ndarray]:
    """User vectors of the ONNX file ``data`` and of torch, for the same random encoder inputs."""
    import onnxruntime as ort
    import torch

    n, length, dim = 16, trainer.max_len, trainer.dim
    feeds = {"item_vectors": rng.standard_normal((n, length, dim)).astype(np.float32),
             "event_types": rng.integers(0, 5, (n, length)), "gap_buckets": rng.integers(0, 20, (n, length)),
             "mask": rng.random((n, length)) < 0.8}
    feeds["mask"][:, -1] = True
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    encoder = trainer.model.user_encoder
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        want = encoder(*(torch.from_numpy(feeds[k]) for k in ("item_vectors", "event_types", "gap_buckets", "mask"))).numpy()
    encoder.train(was_training)
    return got, want


def test_later_exports_write_the_trained_weights_into_the_graph_traced_at_the_first(small_stream):
    """The encoder is traced once (``EncoderTemplate``); an export after more training computes what the trained
    module does, including weights that were equal when it was traced (fresh LayerNorms), which the exporter
    would otherwise have merged into one initializer."""
    import torch

    from recmodel import export as export_mod
    from tests.unit.recmodel.conftest import make_trainer

    trainer = make_trainer(seed=5)
    trainer.upsert_items(small_stream.items())
    encoder = trainer.model.user_encoder
    rng = np.random.default_rng(0)
    first = export_mod.encoder_onnx_bytes(encoder, dim=trainer.dim, max_len=trainer.max_len)
    assert isinstance(export_mod._templates[encoder], export_mod.EncoderTemplate)
    got, want = _onnx_vectors(first, trainer, rng)
    np.testing.assert_allclose(got, want, atol=1e-5)

    trainer.train_events(list(small_stream.events())[:800])
    with torch.no_grad():  # two LayerNorms that were equal at the trace now differ
        encoder.blocks[-1].ln1.weight.mul_(3.0)
    rng_state, mode = torch.get_rng_state(), encoder.training
    later = export_mod.encoder_onnx_bytes(encoder, dim=trainer.dim, max_len=trainer.max_len)
    assert torch.equal(torch.get_rng_state(), rng_state) and encoder.training == mode
    got, want = _onnx_vectors(later, trainer, rng)
    np.testing.assert_allclose(got, want, atol=1e-5)
    stale, _ = _onnx_vectors(first, trainer, np.random.default_rng(1))
    fresh, _ = _onnx_vectors(later, trainer, np.random.default_rng(1))
    assert np.abs(stale - fresh).max() > 1e-3  # the first file really had other weights


def test_an_encoder_no_template_reproduces_is_traced_in_full_every_time(small_stream, monkeypatch):
    from recmodel import export as export_mod
    from tests.unit.recmodel.conftest import make_trainer

    def refuse(self, *args, **kwargs):
        raise export_mod.TemplateUnavailable("the graph does not reproduce the module")

    monkeypatch.setattr(export_mod.EncoderTemplate, "__init__", refuse)
    trainer = make_trainer(seed=6)
    trainer.upsert_items(small_stream.items())
    encoder = trainer.model.user_encoder
    rng = np.random.default_rng(2)
    first = export_mod.encoder_onnx_bytes(encoder, dim=trainer.dim, max_len=trainer.max_len)
    assert export_mod._templates[encoder] is None
    trainer.train_events(list(small_stream.events())[:400])
    later = export_mod.encoder_onnx_bytes(encoder, dim=trainer.dim, max_len=trainer.max_len)
    got, want = _onnx_vectors(later, trainer, rng)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert first != later
