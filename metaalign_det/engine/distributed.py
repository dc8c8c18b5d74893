"""Data-parallel gradient averaging without DistributedDataParallel.

Why not DDP: the MetaAlign step evaluates the model at several parameter values (θ, θ', θ ± εv) through
``torch.func.functional_call`` and needs the *inner* gradient averaged across processes before θ' is formed;
DDP's reducer hooks fire on every backward and forbid unused parameters. So the trainer keeps the plain
module and averages gradients itself: one coalesced all-reduce of the final gradients per step (plus one of
the inner gradient in the meta modes, without which θ' would differ per process and the result would not equal
one process with the same global batch). Works with gloo (CPU) and NCCL (GPU).
"""
from typing import Iterable, List

import torch
import torch.distributed as dist

__all__ = ["world_size", "all_reduce_mean_", "broadcast_module_"]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def all_reduce_mean_(tensors: List[torch.Tensor]) -> None:
    """Average ``tensors`` in place over all processes with ONE all-reduce (flattened into a buffer)."""
    n = world_size()
    if n == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(torch.float32) for t in tensors])
    dist.all_reduce(flat)
    flat.div_(n)
    offset = 0
    for t in tensors:
        k = t.numel()
        t.copy_(flat[offset : offset + k].view_as(t))
        offset += k


@torch.no_grad()
def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every process (what DDP does at construction)."""
    if world_size() == 1:
        return
    tensors: Iterable[torch.Tensor] = list(module.parameters()) + list(module.buffers())
    for t in tensors:
        dist.broadcast(t.data, src)
