"""The data-parallel path on CPU processes (gloo): replicas stay identical while each computes half of
every step. The production path (NCCL, one GPU per rank) is the same code but cannot run here (no GPU)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from services.common.net import free_port

pytestmark = pytest.mark.slow


def _replica(rank: int, port: int, world: int, out) -> None:
    torch.set_num_threads(1)
    from recmodel.data import SyntheticStream
    from recmodel.text import HashingTextEncoder
    from services.trainer.distributed import DataParallelTrainer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        stream = SyntheticStream(seed=3, n_users=40, n_items=80, n_events=1200)
        trainer = DataParallelTrainer(dim=16, max_len=8, capacity=200, text_encoder=HashingTextEncoder(16),
                                      device="cpu", batch_size=200, replay_batch=16, n_random_negatives=16)
        trainer.upsert_items(stream.items())
        stats = trainer.train_events(list(stream.events()))
        flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        # Target counts and the ID gates they drive (a buffer, not a parameter) must agree too.
        counts = torch.cat([torch.from_numpy(trainer._counts), trainer.model.items.id_gate.double()])
        counts_all = [torch.zeros_like(counts) for _ in range(world)]
        dist.all_gather(counts_all, counts)
        if rank == 0:
            out.put({
                "params_equal": all(torch.equal(gathered[0], g) for g in gathered[1:]),
                "counts_equal": all(torch.equal(counts_all[0], c) for c in counts_all[1:]),
                "counts_total": float(trainer._counts.sum()),
                "events": trainer.events_trained, "steps": stats.steps, "loss": stats.loss,
            })
        # Rank 0 hosts the rendezvous store: it must not tear down while rank 1 still uses it.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_rank_data_parallel_replicas_stay_identical():
    port = free_port()
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    procs = [ctx.Process(target=_replica, args=(r, port, 2, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert all(p.exitcode == 0 for p in procs)
    result = out.get()
    assert result["params_equal"] and result["counts_equal"]
    assert result["events"] == 1200 and result["steps"] == 6
    assert result["counts_total"] > 0 and result["loss"] == result["loss"]
