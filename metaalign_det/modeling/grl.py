"""Gradient reversal (Ganin & Lempitsky, 2015): identity forward, gradient times ``-weight`` backward.

The discriminators sit behind it, so one backward pass trains them to *separate* the domains while the
features in front of it are pushed to *confuse* them.
"""
import torch
from torch import nn

__all__ = ["GradientReversalFunction", "GradientReversal", "grad_reverse"]


class GradientReversalFunction(torch.autograd.Function):
    """``y = x``; ``dL/dx = -weight * dL/dy``.

    ``weight`` is a Python float (not a tensor): it is a fixed hyper-parameter, so it gets no gradient.
    A negative ``weight`` therefore *scales* the gradient by ``|weight|`` without reversing it (the
    consistency regulariser uses that). Double backward is not supported (not needed: the meta step's
    second-order mode uses finite differences through ROI features anyway).
    """

    # lets torch.func.vmap batch it (the rule is trivial: identity forward, elementwise backward)
    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight):
        # view_as: return a new tensor object (an identity that autograd can attach a node to) without a copy
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        # forward/setup_context split (instead of forward(ctx, ...)) so torch.func transforms accept it
        ctx.weight = float(inputs[1])

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * (-ctx.weight), None


def grad_reverse(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Functional form: identity on ``x`` with the backward gradient multiplied by ``-weight``."""
    return GradientReversalFunction.apply(x, weight)


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse` with a fixed weight lambda (DA-Faster: 0.1).

    Args:
        weight: lambda >= 0; backward multiplies the incoming gradient by ``-weight``.

    ``forward(x, reverse=True)``: any shape in, same tensor values out. With ``reverse=False`` the
    gradient is multiplied by ``+weight`` instead (scaled, not reversed).
    """

    def __init__(self, weight: float = 1.0):
        super().__init__()
        if weight < 0:
            raise ValueError(f"GradientReversal weight must be >= 0 (it is negated in backward), got {weight}")
        self.weight = float(weight)

    def forward(self, x: torch.Tensor, reverse: bool = True) -> torch.Tensor:
        return grad_reverse(x, self.weight if reverse else -self.weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
