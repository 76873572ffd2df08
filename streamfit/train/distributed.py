"""Process-group set-up for DeepSpeed runs, with or without its launcher, and the few
collectives the loop needs (lockstep epochs, summed counters)."""

from __future__ import annotations

import gc
import os
import socket

import torch
import torch.distributed as dist

# a gloo group for the loop's small control collectives when the main group is NCCL
_control: dist.ProcessGroup | None = None


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


def _skip_shared_memory_collectives() -> None:
    """On a CPU, DeepSpeed builds its shared-memory collectives, a C++ op compiled on each
    machine's first run (tens of seconds); the CPU runs here (the demo, the tests) are served
    by gloo's. A DeepSpeed without the hook builds it as before."""
    import importlib

    ds_comm = importlib.import_module("deepspeed.comm.torch")
    if hasattr(ds_comm, "build_shm_op"):
        ds_comm.build_shm_op = lambda: None


def init_distributed() -> tuple[int, int, torch.device]:
    """Join (or create) the process group the DeepSpeed way; returns (rank, world_size,
    device): ``cuda:LOCAL_RANK`` on GPU machines, the CPU (gloo) otherwise."""
    set_single_process_env()
    import deepspeed

    if not torch.cuda.is_available():
        _skip_shared_memory_collectives()
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    global _control
    if dist.get_backend() != "gloo" and dist.get_world_size() > 1:
        # the loop's per-step flags go over the CPU: a GPU collective read back by the host
        # would make every step wait for the GPU
        _control = dist.new_group(backend="gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def _control_device(device: torch.device | None = None) -> torch.device | str:
    """Where a control collective's tensor lives: the CPU for the gloo control group or a
    gloo main group, else ``device`` (default: the current CUDA device)."""
    if _control is not None or dist.get_backend() == "gloo":
        return "cpu"
    return device if device is not None else torch.device("cuda", torch.cuda.current_device())


def all_have(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is True on every rank: ranks whose shards hold different sample
    counts end an epoch together, so no rank waits forever in a collective. Over the CPU
    (a gloo group beside NCCL): the GPU is never waited for."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=_control_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_control)
    return bool(t.item())


def all_gather_ints(value: int) -> list[int]:
    """``value`` of every rank, in rank order, gathered over the CPU (the control group beside
    NCCL): a host number never waits for the GPU."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    t = torch.tensor([value], device=_control_device())
    parts = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t, group=_control)
    return [int(p.item()) for p in parts]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (in place, and returned)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def is_main_process() -> bool:
    """Rank 0, or a process outside any process group."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (and the control group) before the interpreter exits: a group
    left to the interpreter's teardown can abort the process as it ends ("terminate called
    without an active exception"). For a program's end: the group cannot be joined again."""
    global _control
    if dist.is_initialized():
        # a finished run's engine sits in reference cycles (its module's hooks) that hold its
        # groups: freed now, their threads end before the teardown
        gc.collect()
        if _control is not None:
            dist.destroy_process_group(_control)
            _control = None
        # DeepSpeed's own: it also drops the groups DeepSpeed keeps (its world group), whose
        # gloo threads would otherwise live on into the teardown
        import deepspeed.comm

        if deepspeed.comm.is_initialized():
            deepspeed.comm.destroy_process_group()
        else:
            dist.destroy_process_group()
