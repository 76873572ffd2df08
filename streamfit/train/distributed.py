"""Process-group set-up for DeepSpeed runs, with or without its launcher, and the few
collectives the loop needs (lockstep epochs, summed counters)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def set_single_process_env() -> bool:
    """Fill RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT for a plain
    ``python recipe.py`` run, so DeepSpeed does not go looking for MPI. Returns whether the
    environment came from a launcher."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not launched:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    return launched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, torch.device]:
    """Join (or create) the process group the DeepSpeed way; returns (rank, world_size,
    device): ``cuda:LOCAL_RANK`` on GPU machines, the CPU (gloo) otherwise."""
    set_single_process_env()
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def all_have(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is True on every rank: ranks whose shards hold different sample
    counts end an epoch together, so no rank waits forever in a collective."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (in place, and returned)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
