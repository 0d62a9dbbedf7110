"""Recommendation quality benchmark: ``streamrec bench quality --data PATH --format FMT [--k 10] [--cold-start]``.

Leave-last-out split of the dataset; on the training part it trains
* the streaming model: one pass in time order (micro-batches + replay), as the trainer service does,
* the same model offline: several shuffled epochs over the same training part,
and scores popularity and item-kNN baselines, all ranked on the same held-out test events (full ranking
among items the user has not interacted with). ``--cold-start`` adds HR/NDCG on the test cases whose
item was first seen in the last 10% of the time span, for the streaming model with and without the text
tower. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from recmodel.data import FORMATS, Item, load_dataset
from recmodel.evaluate import ItemKNNBaseline, PopularityBaseline, evaluate_leave_last_out, leave_last_out_split
from recmodel.text import HashingTextEncoder, TextEncoder
from recmodel.train import IncrementalTrainer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrec bench quality", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="", help="dataset path; for --format synthetic a spec like seed=0,n_users=600")
    p.add_argument("--format", default="synthetic", choices=FORMATS)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--cold-start", action="store_true", help="also report items first seen in the last 10%% of time")
    p.add_argument("--epochs", type=int, default=30, help="epochs for the offline reference model")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-encoder", choices=("minilm", "hashing"), default="minilm")
    p.add_argument("--id-gate-prior", type=float, default=5.0, help="interactions at which an item's ID embedding gets half weight")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dataset = load_dataset(args.data, args.format)
    items = {it.item_id: it for it in dataset.items}
    for e in dataset.events:  # items without catalog metadata still take part (no text)
        items.setdefault(e.item_id, Item(e.item_id))
    item_list = list(items.values())
    item_ids = [it.item_id for it in item_list]
    split = leave_last_out_split(dataset.events, seed=args.seed)
    k = args.k
    timings: dict[str, float] = {}

    def evaluate(model, **kw) -> dict:
        r = evaluate_leave_last_out(model, split, item_ids, k=k, **kw)
        return {f"hr@{k}": round(r[f"hr@{k}"], 4), f"ndcg@{k}": round(r[f"ndcg@{k}"], 4), "users": r["users"]}

    text_encoder = TextEncoder() if args.text_encoder == "minilm" else HashingTextEncoder(128)
    config = dict(
        dim=args.dim, max_len=args.max_len, capacity=len(item_list) + 16, batch_size=args.batch_size,
        replay_batch=args.batch_size // 2, seed=args.seed, text_encoder=text_encoder, id_gate_prior=args.id_gate_prior,
    )

    def train(streaming: bool, use_text: bool = True) -> IncrementalTrainer:
        t0 = time.perf_counter()
        trainer = IncrementalTrainer(**config, use_text=use_text)
        trainer.upsert_items(item_list)
        if streaming:
            trainer.train_events(split.train)
        else:
            trainer.fit_offline(split.train, epochs=args.epochs)
        timings[("streaming" if streaming else "offline") + ("" if use_text else "_no_text")] = round(time.perf_counter() - t0, 1)
        return trainer

    results: dict[str, dict] = {}
    results["popularity"] = evaluate(PopularityBaseline().fit(split.train))
    results["item_knn"] = evaluate(ItemKNNBaseline().fit(split.train))
    streaming = train(streaming=True)
    results["streaming"] = evaluate(streaming)
    results["offline"] = evaluate(train(streaming=False))
    out: dict = {
        "bench": "quality",
        "format": args.format,
        "data": args.data,
        "k": k,
        "users": len(dataset.users),
        "items": len(item_list),
        "events": len(dataset.events),
        "train_events": len(split.train),
        "test_users": len(split.test),
        "models": results,
        "streaming_over_offline_hr": round(results["streaming"][f"hr@{k}"] / max(results["offline"][f"hr@{k}"], 1e-12), 3),
        "text_encoder": text_encoder.name,
    }
    if args.cold_start:
        first_seen: dict[str, int] = {}
        for e in dataset.events:
            first_seen[e.item_id] = min(first_seen.get(e.item_id, e.timestamp_ms), e.timestamp_ms)
        t_min = min(e.timestamp_ms for e in dataset.events)
        t_max = max(e.timestamp_ms for e in dataset.events)
        cutoff = t_min + 0.9 * (t_max - t_min)
        is_cold = lambda user, event: first_seen[event.item_id] >= cutoff  # noqa: E731
        no_text = train(streaming=True, use_text=False)
        out["cold_start"] = {
            "first_seen_after_ms": int(cutoff),
            "with_text": evaluate(streaming, users=is_cold),
            "without_text": evaluate(no_text, users=is_cold),
        }
    out["train_seconds"] = timings
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out, sort_keys=True))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
