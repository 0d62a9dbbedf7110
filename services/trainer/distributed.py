"""Data-parallel training across the GPUs of one pod (torch.distributed), rank 0 consuming and exporting.

Rank 0 runs the normal :class:`TrainerService` (leader election, Kafka, checkpoints, export, registry)
with a :class:`DistributedBackend`: every state change (restore, item upserts, a micro-batch of events)
is broadcast to the other ranks before rank 0 applies it itself, so all ranks hold the same vocabulary,
histories, replay buffer and random generators. Each optimisation step then splits the step's training
windows across the ranks (``windows[rank::world]``), averages the gradients with one all-reduce before
the identical optimiser step, and sums the logQ popularity counts, so the model replicas stay equal.
Rank 0's state is therefore the whole state: it alone checkpoints and exports.

NCCL on one GPU per rank in production; ``backend: gloo`` runs the same code on CPU processes (tests).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import numpy as np
import torch
import torch.distributed as dist

from recmodel.data import Event, Item
from recmodel.train import IncrementalTrainer
from recmodel.windows import Window, has_target
from services.trainer.backend import apply_allocator_setting
from services.trainer.config import TrainerConfig

logger = logging.getLogger(__name__)


class DataParallelTrainer(IncrementalTrainer):
    """An IncrementalTrainer replica that splits each step's windows over the process group.

    Every rank sees the same windows; each computes the step on its share, gradients are averaged
    before the optimiser steps, and target counts are summed, so replicas stay identical.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self._sharded = False

    def local_windows(self, windows: list[Window]) -> list[Window]:
        shard = windows[self.rank::self.world]
        ok = torch.tensor([1 if any(has_target(w, self.max_len) for w in shard) else 0], device=self._comm_device())
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        # When some rank would have nothing to learn, everyone takes the whole step (identical on every rank).
        self._sharded = bool(int(ok.item()))
        return shard if self._sharded else windows

    def sync_gradients(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def record_targets(self, slots: np.ndarray) -> None:
        if self._sharded:  # every rank counts the targets of every shard
            counts = torch.bincount(torch.from_numpy(slots), minlength=self.capacity + 1).to(self._comm_device())
            dist.all_reduce(counts)
            counts = counts.cpu().numpy()
            slots = np.repeat(np.nonzero(counts)[0], counts[counts > 0])
        super().record_targets(slots)

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


# ---------------------------------------------------------------------- commands rank 0 -> others
def _broadcast(obj) -> object:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _items_payload(items) -> list[dict]:
    return [it.to_dict() for it in items]


def _events_payload(events) -> list[tuple]:
    return [(e.event_id, e.user_id, e.item_id, e.type, e.value, e.timestamp_ms, dict(e.context)) for e in events]


class _Replica:
    """What every rank does with a command (rank 0 through DistributedBackend, others in worker_loop)."""

    def __init__(self, config: TrainerConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.trainer: DataParallelTrainer | None = None

    def apply(self, cmd: tuple):
        from services.trainer.service import make_text_encoder

        op = cmd[0]
        if op == "restore":
            enc = make_text_encoder(self.config.trainer.model)
            path = cmd[1]
            if path is None:
                self.trainer = DataParallelTrainer(**self.config.trainer.model.trainer_kwargs(), text_encoder=enc,
                                                   device=self.device)
                return None
            self.trainer, extra = DataParallelTrainer.load_checkpoint(path, text_encoder=enc, device=self.device)
            return extra
        if op == "upsert":
            self.trainer.upsert_items([Item(**{**d, "categories": tuple(d["categories"])}) for d in cmd[1]])
        elif op == "train":
            return self.trainer.train_events([Event(*t) for t in cmd[1]], cmd[2], cmd[3])
        elif op == "replay":
            return self.trainer.replay(cmd[1])
        elif op == "close":
            self.trainer = None
        return None


class DistributedBackend:
    """Rank 0's TrainingBackend (services.trainer.backend): broadcast each command, then apply it here too."""

    def __init__(self, config: TrainerConfig, device: torch.device) -> None:
        self.replica = _Replica(config, device)
        self.device = device

    @property
    def trainer(self):
        return self.replica.trainer

    def _run(self, cmd: tuple):
        _broadcast(cmd)
        return self.replica.apply(cmd)

    def restore(self, store):
        from services.trainer.checkpoint_store import StreamPosition

        path = str(store.path) if store.exists() else None
        extra = self._run(("restore", path))  # the checkpoint is on a volume every rank of the pod mounts
        return None if extra is None else StreamPosition.from_extra(extra)

    def upsert_items(self, items) -> None:
        self._run(("upsert", _items_payload(items)))

    def train_events(self, events, batch_size: int | None = None, max_users: int | None = None):
        return self._run(("train", _events_payload(events), batch_size, max_users))

    def replay(self, steps: int):
        return self._run(("replay", steps))

    def close(self) -> None:
        self._run(("close",))

    def shutdown(self) -> None:
        _broadcast(("exit",))


def worker_loop(config: TrainerConfig, device: torch.device) -> None:
    replica = _Replica(config, device)
    while True:
        cmd = _broadcast(None)
        if cmd[0] == "exit":
            return
        replica.apply(cmd)


# ---------------------------------------------------------------------- process launch
def _device_for(rank: int, config: TrainerConfig) -> torch.device:
    if config.trainer.distributed.backend == "nccl":
        torch.cuda.set_device(rank)
        return torch.device("cuda", rank)
    return torch.device("cpu")


def _rank_main(rank: int, config_json: str, world: int) -> None:
    from services.common.entrypoint import run_service
    from services.common.logging import configure_logging
    from services.trainer.service import TrainerService

    config = TrainerConfig.model_validate_json(config_json)
    configure_logging(config.logging.level, config.logging.format, service=f"trainer-rank{rank}")
    apply_allocator_setting(config)  # each rank trains the same step shapes as a single trainer does
    d = config.trainer.distributed
    dist.init_process_group(d.backend, init_method=f"tcp://127.0.0.1:{d.master_port}", rank=rank, world_size=world)
    code = 0
    try:
        device = _device_for(rank, config)
        if rank != 0:
            for signum in (signal.SIGTERM, signal.SIGINT):  # rank 0 decides when everyone stops
                signal.signal(signum, signal.SIG_IGN)
            worker_loop(config, device)
        else:
            # Rank 0 is the trainer service as `streamrec trainer` runs it, with the data-parallel backend.
            backend = DistributedBackend(config, device)
            try:
                code = run_service(TrainerService.from_config(config, backend=backend), name="trainer",
                                   kafka=config.kafka, stop_timeout_s=config.lifecycle.stop_timeout_s)
            finally:
                backend.shutdown()
    finally:
        dist.destroy_process_group()
    # Checkpoint saved, process group gone: the rank ends here, with its code (torch.multiprocessing.spawn reports a
    # failed rank), and without the interpreter's teardown. Native threads (gloo's among them) raced that teardown:
    # a stopped rank 0 died of SIGABRT ("terminate called without an active exception") or SIGSEGV in about 1 stop in
    # 10 on a loaded machine, after it had said "trainer stopped".
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


def run_distributed(config: TrainerConfig) -> int:
    d = config.trainer.distributed
    world = d.world_size or (torch.cuda.device_count() if d.backend == "nccl" else 1)
    if d.backend == "nccl" and torch.cuda.device_count() < world:
        logger.error("distributed training needs one GPU per rank", extra={"world_size": world,
                                                                        "gpus": torch.cuda.device_count()})
        return 2
    logger.info("starting data-parallel training", extra={"world_size": world, "backend": d.backend})
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ranks = torch.multiprocessing.spawn(_rank_main, args=(config.model_dump_json(), world), nprocs=world, join=False)

    def stop_rank0(signum, _frame) -> None:
        # Kubernetes signals this process (PID 1 of the container); rank 0 drains, checkpoints and tells the
        # other ranks to exit, as a single-process trainer would.
        logger.info("stopping data-parallel training", extra={"signal": signal.Signals(signum).name})
        if ranks.processes[0].is_alive():
            os.kill(ranks.processes[0].pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_rank0)
    signal.signal(signal.SIGINT, stop_rank0)
    while not ranks.join():  # raises when a rank fails
        pass
    return 0


__all__ = ["DataParallelTrainer", "DistributedBackend", "run_distributed", "worker_loop"]
