"""Parameter-shaped buffers that the meta step reuses from one call to the next (torch only).

Each MetaAlign step evaluates the model at parameter values other than theta -- theta' = theta - alpha g1, and
for a finite-difference Hessian-vector product theta +- eps v -- and the second order step needs the
(masked) vector v. Allocating a parameter-sized set of tensors for each of them on every step costs an
allocation per parameter (on CPU, fresh pages that the kernel must zero on first touch; on a GPU, allocator
calls and fragmentation). :class:`StepBuffers` keeps one set per use ("slot") alive across steps and
hands it out again while the parameters keep their shapes, dtypes and devices.

Each set is laid out as one flat tensor per (dtype, device) group, the per-parameter tensors being views of
it, so that an elementwise operation on the whole set (a device-side select, a scale) is one kernel per group
instead of one per parameter.

Memory: one parameter-sized set per slot in use, held between steps (first order: 1; second order: 2).
"""
from typing import Dict, List, Sequence, Tuple

import torch

__all__ = ["StepBuffers"]


def _signature(like: Sequence[torch.Tensor]) -> Tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in like)


class StepBuffers:
    """Named sets of tensors shaped like a parameter list, reallocated only when the parameters change.

    ``get(slot, like)`` returns plain contiguous tensors (``requires_grad=False``, contents undefined) with the
    shapes, dtypes and devices of ``like``; ``flat(slot)`` the flat tensors they are views of (one per dtype
    and device, in order of first appearance). The step fills them in place under ``torch.no_grad()`` and
    hands out ``buffer.detach().requires_grad_(True)`` leaves, so a buffer is never itself part of a graph;
    the graph of one evaluation is freed (by its backward) before the buffer is refilled.
    """

    def __init__(self):
        self._slots: Dict[str, Tuple[Tuple, List[torch.Tensor], List[torch.Tensor]]] = {}

    def get(self, slot: str, like: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        sig = _signature(like)
        held = self._slots.get(slot)
        if held is None or held[0] != sig:
            held = (sig,) + _allocate(like)
            self._slots[slot] = held
        return held[1]

    def flat(self, slot: str) -> List[torch.Tensor]:
        """The flat storage tensors of ``slot`` (after :meth:`get`)."""
        return self._slots[slot][2]

    def nbytes(self) -> int:
        """Bytes held over all slots."""
        return sum(f.numel() * f.element_size() for _, _, flats in self._slots.values() for f in flats)

    def clear(self) -> None:
        self._slots.clear()


def _allocate(like: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    groups: Dict[Tuple, List[int]] = {}
    for i, t in enumerate(like):
        groups.setdefault((t.dtype, t.device), []).append(i)
    views: List[torch.Tensor] = [None] * len(like)
    flats = []
    for (dtype, device), idx in groups.items():
        flat = torch.empty(sum(like[i].numel() for i in idx), dtype=dtype, device=device)
        flats.append(flat)
        offset = 0
        for i in idx:
            n = like[i].numel()
            views[i] = flat[offset:offset + n].view(like[i].shape)
            offset += n
    return views, flats
