"""Gather per-process tensors to the main process without leaving the device.

detectron2's ``comm.gather`` pickles through a gloo group (CPU copies, and CUDA tensors pickled with their
device index). Detections are plain tensors, so they go through ``torch.distributed.all_gather`` on the
backend's own device instead: CUDA with NCCL (what ``launch`` uses on GPUs), CPU with gloo.
"""
from typing import List

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["gather_tensors"]


def _comm_device(tensor: torch.Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_tensors(tensor: torch.Tensor, dst: int = 0) -> List[torch.Tensor]:
    """Rank ``dst`` gets the list of every process's ``tensor`` ([N_r, ...], same trailing shape and dtype,
    N_r may differ), on ``tensor``'s device; other ranks get []. Collective: every process must call it."""
    world = comm.get_world_size()
    if world == 1:
        return [tensor]
    dev = _comm_device(tensor)
    local = tensor.to(dev).contiguous()
    size = torch.tensor([local.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = local.new_zeros((max(sizes),) + tuple(local.shape[1:]))
    padded[: local.shape[0]] = local
    received = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(received, padded)  # all_gather: supported by every backend, unlike gather on NCCL
    if comm.get_rank() != dst:
        return []
    return [r[:n].to(tensor.device) for r, n in zip(received, sizes)]
