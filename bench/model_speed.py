"""Model speed benchmark: ``streamrec bench model``.

Measures, on this machine: streaming training throughput (events/s through
``IncrementalTrainer.train_events`` with the default hyperparameters), text-tower upsert throughput
(items/s through the frozen MiniLM), and ONNX Runtime user-encoder latency (p50/p99 ms) at batch 1 and
64 with full-length histories, for the fp32 export and its int8 (dynamic quantisation) variant, plus the
int8 variant's agreement with fp32 (mean cosine). Prints one JSON line.

``--device`` picks where torch trains (CUDA when present, by default) and ``--providers cpu`` keeps the
fp32 encoder on ONNX Runtime's CPU provider, so one GPU machine gives both sets of figures;
``providers_used`` is what the fp32 session really runs on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from recmodel.data import SyntheticStream
from recmodel.export import export_artifact
from recmodel.serving import ArtifactModel, provider_names, select_providers
from recmodel.text import HashingTextEncoder, TextEncoder
from recmodel.train import IncrementalTrainer


def _latency(model: ArtifactModel, batch: int, iters: int, rng: np.random.Generator) -> dict:
    ids = list(model.item_ids)
    L = model.max_len
    histories = [
        [(ids[int(rng.integers(len(ids)))], "click", 1_700_000_000_000 + 60_000 * t) for t in range(L)]
        for _ in range(batch)
    ]
    feeds = dict(zip(("item_vectors", "event_types", "gap_buckets", "mask"), model._batch(histories, 1_700_000_000_000 + 60_000 * L)))
    for _ in range(5):
        model.session.run(None, feeds)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        model.session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    for _ in range(max(1, iters // 10)):
        model.encode(histories, 1_700_000_000_000 + 60_000 * L)
    with_features = (time.perf_counter() - t0) * 1000 / max(1, iters // 10)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
        "with_feature_building_ms": round(with_features, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamrec bench model", description="training throughput and ONNX latency")
    p.add_argument("--events", type=int, default=12_000)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--text-encoder", choices=("minilm", "hashing"), default="minilm")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where torch trains (auto: CUDA when present)")
    p.add_argument("--providers", choices=("auto", "cpu"), default="auto",
                   help="ONNX Runtime providers of the fp32 encoder (auto: TensorRT -> CUDA -> CPU, as available)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stream = SyntheticStream(seed=0, n_events=args.events)
    items = stream.items()
    events = list(stream.events())
    encoder = TextEncoder() if args.text_encoder == "minilm" else HashingTextEncoder(128)
    trainer = IncrementalTrainer(capacity=len(items) + 16, text_encoder=encoder,
                                 device=None if args.device == "auto" else args.device)
    t0 = time.perf_counter()
    trainer.upsert_items(items)
    upsert_s = time.perf_counter() - t0
    warm = events[: len(events) // 4]
    trainer.train_events(warm)  # histories fill up; the timed part runs with realistic lengths
    stats = trainer.train_events(events[len(warm) :])
    out: dict = {
        "bench": "model_speed",
        "device": str(trainer.device),
        "torch_threads": torch.get_num_threads(),
        "config": {k: trainer.hyperparameters()[k] for k in ("dim", "max_len", "batch_size", "replay_batch", "n_layers", "n_random_negatives")},
        "train_events_per_s": round(stats.events_per_second, 1),
        "train_steps": stats.steps,
        "text_upsert_items_per_s": round(len(items) / upsert_s, 1),
        "onnx": {},
    }
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        export_artifact(trainer, tmp, model_name="bench", training_offsets={}, metrics={}, int8=True)
        providers = select_providers() if args.providers == "auto" else ["CPUExecutionProvider"]
        out["providers"] = provider_names(providers)
        variants = {
            "fp32": ArtifactModel.load(tmp, providers=providers),
            "int8": ArtifactModel.load(tmp, providers=["CPUExecutionProvider"], encoder_file="user_encoder.int8.onnx"),
        }
        out["providers_used"] = variants["fp32"].providers
        for name, model in variants.items():
            out["onnx"][name] = {f"batch{b}": _latency(model, b, args.iters if b == 1 else max(20, args.iters // 4), rng) for b in (1, 64)}
        histories = [trainer.user_histories()[u] for u in list(trainer.user_histories())[:256]]
        now = trainer.clock_ms
        a = variants["fp32"].encode(histories, now)
        b = variants["int8"].encode(histories, now)
        out["onnx"]["int8"]["mean_cosine_vs_fp32"] = round(float(np.mean(np.sum(a * b, axis=1))), 5)
        t = trainer.user_vectors(histories, [now] * len(histories))
        out["onnx"]["fp32"]["max_abs_diff_vs_torch"] = float(np.abs(a - t).max())
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
