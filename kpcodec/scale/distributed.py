"""Data-parallel training under torchrun: the process group from torchrun's environment, and the
gradient all-reduce of every step.

`kpcodec train` runs unchanged under `torchrun --nproc-per-node N` (and multi-node `--nnodes`,
`--rdzv-endpoint`): every rank draws the same global batch (the sampler's RNG is the same on all of
them), takes its share, and the ranks average their gradients before each optimiser step, so the
weights stay the same on every rank and equal a single process that splits the global batch into as
many micro-batches (`--accumulate`). Gradients are all-reduced after backward rather than through
DistributedDataParallel's hooks: the equivariance loss calls the detector a second time outside the
model's forward, which DDP's reducer does not allow; the arithmetic is DDP's.
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


def average_gradients(params) -> None:
    """Every rank's gradients replaced by their mean over the ranks (one flat all-reduce)."""
    import torch
    import torch.distributed as dist

    world = world_size()
    grads = [p.grad for p in params if p.grad is not None]
    if world <= 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank, as DDP does at each forward."""
    import torch.distributed as dist

    if world_size() <= 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf, 0)


def total(value: float) -> float:
    """The sum of `value` over the ranks (e.g. CPU seconds of a step)."""
    if world_size() <= 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())
