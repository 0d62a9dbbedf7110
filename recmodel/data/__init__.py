"""Event and item records, the synthetic stream, and dataset loaders."""

from recmodel.data.loaders import (
    FORMATS,
    DataFormatError,
    Dataset,
    load_dataset,
    load_jsonl,
    load_ml100k,
    load_movielens_csv,
    synthetic_dataset,
    write_jsonl,
)
from recmodel.data.synthetic import SyntheticStream
from recmodel.data.types import DEFAULT_EVENT_WEIGHTS, EVENT_TYPES, Event, HistoryEntry, Item

__all__ = [
    "DEFAULT_EVENT_WEIGHTS",
    "EVENT_TYPES",
    "FORMATS",
    "DataFormatError",
    "Dataset",
    "Event",
    "HistoryEntry",
    "Item",
    "SyntheticStream",
    "load_dataset",
    "load_jsonl",
    "load_ml100k",
    "load_movielens_csv",
    "synthetic_dataset",
    "write_jsonl",
]
