"""Recommendation quality benchmark: ``streamrec bench quality --data PATH --format FMT [--k 10] [--cold-start]``.

Leave-last-out split of the dataset (per user: last event = test, the one before = validation); on the
training part it trains, all with the same recipe (``recmodel.train.IncrementalTrainer`` defaults, the
ones the trainer service uses):
* ``streaming``: one pass in time order (micro-batches + replay), as the trainer service does,
* ``streaming_replay``: the same model after the idle-time replay the trainer does once it has caught
  up (``--replay-epochs`` passes over its replay buffer; the budget is in the output),
* ``offline``: the same model trained for ``--epochs`` shuffled epochs over the training part,
and the baselines popularity, item-kNN, transitions (the trainer's item-to-item table alone) and ALS (``implicit``; its settings are picked on the validation
events from a small grid, so it is a tuned baseline). Everything is ranked on the same held-out events
(full ranking among items the user has not interacted with). The recipe's models score with the
two towers plus the transition bonus; each also reports ``two_tower_alone`` (the bonus off). ``--stage validation`` reports the
validation events instead (choose settings there; report test). ``--cold-start`` adds, for the streaming
model with and without the text tower, HR/NDCG on new items (first seen in the last 10% of the time span):
on the held-out events of such items, and prequentially (test-then-train, as the trainer's own metric)
on every training event of such an item during the one pass, a far larger sample, ranked among every
item, among the new items only, and for an item's very first event among the new items. Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import sys
import time

import torch

from recmodel.data import FORMATS, Item, load_dataset
from recmodel.evaluate import (
    ALSBaseline,
    ItemKNNBaseline,
    PopularityBaseline,
    TransitionBaseline,
    evaluate_leave_last_out,
    leave_last_out_split,
    prequential_evaluate_many,
)
from recmodel.recipe import RECIPE as RECIPE_DEFAULTS
from recmodel.text import HashingTextEncoder, TextEncoder
from recmodel.train import IncrementalTrainer

RECIPE = {k: p.default for k, p in inspect.signature(IncrementalTrainer).parameters.items() if p.default is not p.empty}
# Recipe hyperparameters the bench can override (--dim 128, --full-softmax-items 20000, ...).
KNOBS = ("dim", "max_len", "batch_size", "replay_batch", "n_layers", "n_heads", "n_random_negatives",
         "full_softmax_items", "lr", "dropout", "temperature", "id_gate_prior", "id_dropout", "transition_weight",
         "transition_window", "transition_decay", "transition_span", "transition_span_decay", "transition_backward",
         "transition_top", "replay_history")
ALS_GRID = {"factors": (64, 128), "regularization": (0.01, 0.1), "alpha": (1.0, 10.0)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrec bench quality", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="", help="dataset path; for --format synthetic a spec like seed=0,n_users=600")
    p.add_argument("--format", default="synthetic", choices=FORMATS)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--stage", choices=("test", "validation"), default="test",
                   help="which held-out event to report (tune on validation, report test)")
    p.add_argument("--cold-start", action="store_true", help="also report items first seen in the last 10%% of time")
    p.add_argument("--epochs", type=int, default=40, help="epochs for the offline model")
    p.add_argument("--replay-epochs", type=float, default=RECIPE_DEFAULTS["idle_replay_epochs"],
                   help="idle replay after the streaming pass, in passes over the replay buffer")
    for name in KNOBS:
        p.add_argument("--" + name.replace("_", "-"), type=type(RECIPE[name]), default=RECIPE[name])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-encoder", choices=("minilm", "hashing"), default="minilm")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    return p


def _timed(fn):
    """``fn()`` and the seconds it took, rounded to a tenth."""
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 1)


class _Scorer:
    """Ranks models on the held-out events of the split and keeps one result per model name."""

    def __init__(self, split, item_ids: list[str], k: int, stage: str) -> None:
        self.split = split
        self.item_ids = item_ids
        self.k = k
        self.stage = stage
        self.results: dict[str, dict] = {}

    def evaluate(self, model, stage: str | None = None, **kw) -> dict:
        k, stage = self.k, self.stage if stage is None else stage
        r = evaluate_leave_last_out(model, self.split, self.item_ids, k=k, stage=stage, **kw)
        return {f"hr@{k}": round(r[f"hr@{k}"], 4), f"ndcg@{k}": round(r[f"ndcg@{k}"], 4), "users": r["users"],
                "hits": int(round(r[f"hr@{k}"] * r["users"]))}

    def record(self, name: str, model, seconds: float, **extra) -> None:
        self.results[name] = {**self.evaluate(model), "seconds": seconds, **extra}
        if isinstance(model, IncrementalTrainer) and model.transition_weight > 0:
            weight, model.transition_weight = model.transition_weight, 0.0
            self.results[name]["two_tower_alone"] = self.evaluate(model)  # the same model without the transition bonus
            model.transition_weight = weight


def _load_catalog(data: str, fmt: str):
    """The dataset and every item it mentions; items without catalog metadata still take part (no text)."""
    dataset = load_dataset(data, fmt)
    items = {it.item_id: it for it in dataset.items}
    for e in dataset.events:
        items.setdefault(e.item_id, Item(e.item_id))
    return dataset, list(items.values())


def _trainer_config(args: argparse.Namespace, n_items: int, text_encoder) -> dict:
    config = {name: getattr(args, name) for name in KNOBS}
    config.update(capacity=n_items + 16, seed=args.seed, text_encoder=text_encoder)
    return config


def _new_trainer(config: dict, item_list: list[Item], *, use_text: bool) -> IncrementalTrainer:
    trainer = IncrementalTrainer(**config, use_text=use_text)
    trainer.upsert_items(item_list)
    return trainer


def _tuned_als(scorer: _Scorer, train, seed: int):
    """ALS with the grid settings that score best on the validation events: (validation HR, params, model)."""
    best = None
    for values in itertools.product(*ALS_GRID.values()):
        params = dict(zip(ALS_GRID, values))
        als = ALSBaseline(**params, seed=seed).fit(train)
        score = scorer.evaluate(als, stage="validation")[f"hr@{scorer.k}"]
        if best is None or score > best[0]:
            best = (score, params, als)
    return best


def _run_baselines(scorer: _Scorer, train, seed: int) -> None:
    model, s = _timed(lambda: PopularityBaseline().fit(train))
    scorer.record("popularity", model, s)
    model, s = _timed(lambda: ItemKNNBaseline().fit(train))
    scorer.record("item_knn", model, s)
    model, s = _timed(lambda: TransitionBaseline(
        window=RECIPE["transition_window"], decay=RECIPE["transition_decay"], max_next=RECIPE["transition_max_next"],
        span=RECIPE["transition_span"], span_decay=RECIPE["transition_span_decay"],
        backward=RECIPE["transition_backward"]).fit(train))
    scorer.record("transitions", model, s)
    (val_hr, als_params, als), s = _timed(lambda: _tuned_als(scorer, train, seed))
    scorer.record("als", als, s, params=als_params, validation_hr=val_hr)


def _cold_item_filter(events):
    """Items first seen in the last 10% of the time span: the cutoff time, their ids and a filter
    ``(user, event)`` for held-out events."""
    first_seen: dict[str, int] = {}
    for e in events:
        first_seen[e.item_id] = min(first_seen.get(e.item_id, e.timestamp_ms), e.timestamp_ms)
    t_min = min(e.timestamp_ms for e in events)
    cutoff = t_min + 0.9 * (max(e.timestamp_ms for e in events) - t_min)
    cold_items = frozenset(i for i, t in first_seen.items() if t >= cutoff)

    def is_cold(user, event) -> bool:
        return event.item_id in cold_items

    return cutoff, cold_items, is_cold


def _cold_views(train, cold_items: frozenset, is_cold) -> dict:
    """The prequential cold-start views: events of new items ranked among every item and among the new items
    only (a "new arrivals" shelf), and an item's very first event (no interaction yet) among the new items."""
    first: dict[str, str] = {}
    for e in train:
        first.setdefault(e.item_id, e.event_id)

    def is_new(e) -> bool:
        return is_cold(e.user_id, e)

    def is_first(e) -> bool:
        return is_new(e) and first[e.item_id] == e.event_id

    return {"all_items": {"where": is_new},
            "among_new_items": {"where": is_new, "candidates": cold_items},
            "first_event_among_new_items": {"where": is_first, "candidates": cold_items}}


def _one_pass(scorer: _Scorer, trainer: IncrementalTrainer, train, cold_views: dict | None):
    """Train one pass in time order; with ``cold_views``, predict the events they select before training on
    them. Returns (training seconds, {view: prequential score} or None)."""
    if cold_views is None:
        _, s = _timed(lambda: trainer.train_events(train))
        return s, None
    k = scorer.k
    r, s = _timed(lambda: prequential_evaluate_many(trainer, train, cold_views, k=k, window=trainer.batch_size))
    ranking_s = sum(v["seconds"] for v in r.values())
    return round(s - ranking_s, 1), {name: {f"hr@{k}": round(v[f"hr@{k}"], 4), f"ndcg@{k}": round(v[f"ndcg@{k}"], 4),
                                            "predictions": v["predictions"]} for name, v in r.items()}


def _run_streaming(scorer: _Scorer, streaming: IncrementalTrainer, train, args: argparse.Namespace, is_cold,
                   cold_views: dict | None):
    """One pass in time order, then the idle replay; returns the cold-start scores of the one-pass model
    (held-out, prequential; None without ``--cold-start``)."""
    s, prequential = _one_pass(scorer, streaming, train, cold_views)
    scorer.record("streaming", streaming, s)
    cold_with_text = (scorer.evaluate(streaming, users=is_cold), prequential) if args.cold_start else None
    replay_steps = int(round(args.replay_epochs * streaming.replay_epoch_steps()))
    _, s = _timed(lambda: streaming.replay(replay_steps))
    scorer.record("streaming_replay", streaming, round(scorer.results["streaming"]["seconds"] + s, 1),
                  replay={"epochs": args.replay_epochs, "steps": replay_steps, "seconds": s,
                          "windows_per_step": args.replay_batch})
    return cold_with_text


def _run_offline(scorer: _Scorer, offline: IncrementalTrainer, train, epochs: int) -> None:
    _, s = _timed(lambda: offline.fit_offline(train, epochs=epochs))
    scorer.record("offline", offline, s, epochs=epochs)


def _ratio(a: dict, b: dict) -> float | None:
    """``a``'s hits over ``b``'s; None (JSON null) when ``b`` has none."""
    return round(a["hits"] / b["hits"], 3) if b["hits"] else None


def _summary(args: argparse.Namespace, dataset, item_list: list[Item], split, config: dict, results: dict) -> dict:
    return {
        "bench": "quality",
        "format": args.format,
        "data": args.data,
        "stage": args.stage,
        "k": args.k,
        "users": len(dataset.users),
        "items": len(item_list),
        "events": len(dataset.events),
        "train_events": len(split.train),
        "test_users": len(split.test),
        "recipe": {key: value for key, value in config.items() if key not in ("text_encoder", "capacity")},
        "models": results,
        # Ratios of the hit counts (the same users for every model), not of the rounded HRs.
        "streaming_over_als_hr": _ratio(results["streaming"], results["als"]),
        "streaming_over_offline_hr": _ratio(results["streaming"], results["offline"]),
        "streaming_replay_over_offline_hr": _ratio(results["streaming_replay"], results["offline"]),
        "text_encoder": config["text_encoder"].name,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dataset, item_list = _load_catalog(args.data, args.format)
    split = leave_last_out_split(dataset.events, seed=args.seed)
    scorer = _Scorer(split, [it.item_id for it in item_list], args.k, args.stage)
    text_encoder = TextEncoder() if args.text_encoder == "minilm" else HashingTextEncoder(128)
    config = _trainer_config(args, len(item_list), text_encoder)
    _run_baselines(scorer, split.train, args.seed)
    cutoff, cold_items, is_cold = _cold_item_filter(dataset.events)
    cold_views = _cold_views(split.train, cold_items, is_cold) if args.cold_start else None
    streaming = _new_trainer(config, item_list, use_text=True)
    cold_with_text = _run_streaming(scorer, streaming, split.train, args, is_cold, cold_views)
    _run_offline(scorer, _new_trainer(config, item_list, use_text=True), split.train, args.epochs)
    out = _summary(args, dataset, item_list, split, config, scorer.results)
    if args.cold_start:
        cold_start = time.perf_counter()
        no_text = _new_trainer(config, item_list, use_text=False)
        _, no_text_prequential = _one_pass(scorer, no_text, split.train, cold_views)
        out["cold_start"] = {
            "first_seen_after_ms": int(cutoff),
            "new_items": len(cold_items),
            "model": "streaming (one pass)",
            "with_text": cold_with_text[0],
            "without_text": scorer.evaluate(no_text, users=is_cold),
            "prequential": {"with_text": cold_with_text[1], "without_text": no_text_prequential},
            "without_text_seconds": round(time.perf_counter() - cold_start, 1),  # the extra model --cold-start costs
        }
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out, sort_keys=True))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
