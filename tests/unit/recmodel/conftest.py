"""Shared, session-scoped fixtures: a small synthetic stream and a trainer fitted on it."""

import pytest
import torch

from recmodel.data import SyntheticStream
from recmodel.text import HashingTextEncoder
from recmodel.train import IncrementalTrainer

SMALL_TRAINER = dict(dim=32, max_len=12, capacity=400, batch_size=64, replay_batch=32, n_random_negatives=64, seed=3)


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def small_stream() -> SyntheticStream:
    return SyntheticStream(seed=11, n_users=60, n_items=200, n_categories=6, n_events=2500)


def make_trainer(**overrides) -> IncrementalTrainer:
    kwargs = {**SMALL_TRAINER, "text_encoder": HashingTextEncoder(48), "device": "cpu", **overrides}
    return IncrementalTrainer(**kwargs)


@pytest.fixture(scope="session")
def trained(small_stream) -> IncrementalTrainer:
    trainer = make_trainer()
    trainer.upsert_items(small_stream.items())
    trainer.train_events(list(small_stream.events()))
    return trainer
