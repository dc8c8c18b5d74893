"""Loss callables and their gradients, shared by the meta step and the Hessian-vector products (torch only).

A loss callable maps parameter values (dict name -> tensor) to a scalar tensor; these helpers evaluate one
with checks and differentiate it w.r.t. a list of leaves, undoing a loss scale (fp16 GradScaler).
"""
from typing import Callable, Dict, List, Optional, Union

import torch

LossFn = Callable[[Dict[str, torch.Tensor]], torch.Tensor]


def _eval_loss(fn: LossFn, p: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Call a loss callable and check it returned a floating-point scalar; returns a 0-d tensor."""
    loss = fn(p)
    if not isinstance(loss, torch.Tensor):
        raise ValueError(f"{name} must return a scalar tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"{name} must return a scalar tensor, got shape {tuple(loss.shape)}")
    if not loss.is_floating_point():
        raise ValueError(f"{name} must return a floating-point scalar, got dtype {loss.dtype}")
    return loss.reshape(())


def _grad(loss: torch.Tensor, leaves: List[torch.Tensor], scale: Union[float, torch.Tensor],
          create_graph: bool = False, retain_graph: Optional[bool] = None) -> List[Optional[torch.Tensor]]:
    """Unscaled ``d(scale * loss) / d leaves``; None for a leaf the loss does not touch.

    ``scale``: a python float, or a 0-d tensor on the loss's device (the fp16 GradScaler's current scale),
    used as it is -- never read to the host, so the step costs no device sync for it."""
    if not loss.requires_grad:  # the loss does not depend on any leaf (e.g. no target instances)
        return [None] * len(leaves)
    unit = not torch.is_tensor(scale) and scale == 1.0
    scaled = loss if unit else loss * scale
    grads = torch.autograd.grad(scaled, leaves, allow_unused=True, create_graph=create_graph,
                                retain_graph=retain_graph)
    if unit:
        return list(grads)
    if create_graph:
        return [None if g is None else g / scale for g in grads]
    return [None if g is None else g.div_(scale) for g in grads]


def _zeros_for_unused(grads: List[Optional[torch.Tensor]], like: List[torch.Tensor]) -> List[torch.Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]
