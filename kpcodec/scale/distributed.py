"""Data-parallel training under torchrun: the process group from torchrun's environment.

`kpcodec train` runs unchanged under `torchrun --nproc-per-node N` (and multi-node `--nnodes`,
`--rdzv-endpoint`): the model is wrapped in DistributedDataParallel; every rank draws the same global
batch (the sampler's RNG is the same on all of them: a distributed sampler without a shard list) and
takes its share; DDP averages the gradients at backward and broadcasts rank 0's buffers at each
forward, so the weights stay the same on every rank and equal those of a single process that splits
the global batch into as many micro-batches (`--accumulate`; tested).
"""
from __future__ import annotations

import os


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_from_env() -> bool:
    """Join torchrun's process group (gloo on the CPU, NCCL on GPUs) if this process is one of
    several ranks; True then."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True


def finish() -> None:
    """Leave the process group (every rank, after its last step): without it a multi-node run hangs
    at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def total(value: float) -> float:
    """The sum of `value` over the ranks (e.g. CPU seconds of a step)."""
    if world_size() <= 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())
