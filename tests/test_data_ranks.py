"""Leaving the process group: after a barrier every rank has reached (no rank leaves while
another still works), and a no-op where no group was joined."""

import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data.ranks import leave_process_group


def _rank(rank: int, folder: str) -> None:
    """One of 2 gloo ranks: a collective, then rank 1 marks that it reached the end
    before leaving; rank 0 checks the mark right after its own leave returned."""
    store = dist.FileStore(str(Path(folder) / "store"), 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    assert total.item() == 3.0
    done = Path(folder) / "rank1-done"
    if rank == 1:  # late, so that a leave without its barrier would find no mark
        time.sleep(0.5)
        done.write_text("")
    leave_process_group()
    assert not dist.is_initialized()
    if rank == 0:  # the barrier returned only once rank 1 had written its mark
        assert done.exists()


def test_leave_waits_for_every_rank_then_destroys(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path),), nprocs=2, join=True)  # raises if a rank failed


def _alone(rank: int) -> None:
    assert not dist.is_initialized()
    leave_process_group()
    leave_process_group(wait=False)
    assert not dist.is_initialized()


def test_leave_without_a_group_is_a_no_op():
    mp.spawn(_alone, nprocs=1, join=True)  # a fresh process: this one may hold a group


def _single(rank: int, folder: str) -> None:
    store = dist.FileStore(str(Path(folder) / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    group = dist.group.WORLD
    leave_process_group()
    # kept, and the same group: DeepSpeed, which cached it, still finds it registered
    assert dist.is_initialized() and dist.group.WORLD is group
    dist.destroy_process_group()


def test_a_single_rank_group_is_kept_for_the_next_entry_point(tmp_path):
    mp.spawn(_single, args=(str(tmp_path),), nprocs=1, join=True)
