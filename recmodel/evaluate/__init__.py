"""Evaluation that works with any model exposing ``score(histories, now_ms, item_ids)``."""

from recmodel.evaluate.baselines import ALSBaseline, ItemKNNBaseline, PopularityBaseline, TransitionBaseline
from recmodel.evaluate.leave_last_out import (
    LeaveLastOutSplit,
    evaluate_leave_last_out,
    leave_last_out_ranks,
    leave_last_out_split,
)
from recmodel.evaluate.metrics import hit_rate, ndcg, target_rank
from recmodel.evaluate.prequential import PrequentialEvaluator, prequential_evaluate, prequential_evaluate_many
from recmodel.evaluate.protocol import Scorer

__all__ = [
    "ALSBaseline",
    "ItemKNNBaseline",
    "LeaveLastOutSplit",
    "PopularityBaseline",
    "Scorer",
    "TransitionBaseline",
    "evaluate_leave_last_out",
    "hit_rate",
    "leave_last_out_ranks",
    "leave_last_out_split",
    "ndcg",
    "PrequentialEvaluator",
    "prequential_evaluate",
    "prequential_evaluate_many",
    "target_rank",
]
