"""Where training runs: ``LocalBackend`` trains in this process (CPU or one GPU); the data-parallel
``DistributedBackend`` (``services.trainer.distributed``) has the same interface."""

from __future__ import annotations

import logging
import os
from typing import Protocol

import torch

from services.common.process import available_cpus, keep_freed_memory
from services.trainer.checkpoint_store import CheckpointStore
from services.trainer.config import TrainerConfig

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_text_encoder(model_cfg):
    """None means the trainer's default (all-MiniLM-L6-v2, loaded on first use)."""
    if model_cfg.text_encoder == "hashing":
        from recmodel.text import HashingTextEncoder

        return HashingTextEncoder(model_cfg.hashing_dim)
    return None


class TrainingBackend(Protocol):
    """Where TrainerService's trainer lives; every call is made from the service's training thread."""

    device: torch.device

    @property
    def trainer(self): ...  # the IncrementalTrainer after restore(), None before and after close()

    def restore(self, store: CheckpointStore):  # -> the checkpoint's StreamPosition, or None for a new trainer
        ...

    def upsert_items(self, items) -> None: ...

    # -> TrainStats; events per step, users trained per step at most (IncrementalTrainer.train_events)
    def train_events(self, events, batch_size: int | None = None, max_users: int | None = None): ...

    def replay(self, steps: int): ...  # -> TrainStats

    def close(self) -> None: ...


def torch_threads(config: TrainerConfig) -> int | None:
    """The intra-op threads ``trainer.torch_threads`` asks for (0: the cores this process may use), or None to
    leave torch's own choice, which follows OMP_NUM_THREADS when that is set."""
    if config.trainer.torch_threads:
        return config.trainer.torch_threads
    return None if os.environ.get("OMP_NUM_THREADS") else available_cpus()


def apply_allocator_setting(config: TrainerConfig) -> None:
    """``trainer.keep_freed_memory`` for this process; every process that trains calls it (this one, and
    each data-parallel rank)."""
    if config.trainer.keep_freed_memory and not keep_freed_memory():
        logger.info("keep_freed_memory: this C library is not glibc; left as it is")


class LocalBackend:
    """Trains in this process (CPU or one GPU). ``DistributedBackend`` has the same interface."""

    def __init__(self, config: TrainerConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.trainer = None
        threads = torch_threads(config)
        if threads:
            torch.set_num_threads(threads)
        apply_allocator_setting(config)

    def restore(self, store: CheckpointStore):
        from recmodel.train import IncrementalTrainer

        enc = make_text_encoder(self.config.trainer.model)
        loaded = store.load(text_encoder=enc, device=self.device)
        if loaded is None:
            self.trainer = IncrementalTrainer(**self.config.trainer.model.trainer_kwargs(), text_encoder=enc,
                                              device=self.device)
            return None
        self.trainer, position = loaded
        return position

    def upsert_items(self, items) -> None:
        self.trainer.upsert_items(items)

    def train_events(self, events, batch_size: int | None = None, max_users: int | None = None):
        return self.trainer.train_events(events, batch_size, max_users)

    def replay(self, steps: int):
        return self.trainer.replay(steps)

    def close(self) -> None:
        self.trainer = None
