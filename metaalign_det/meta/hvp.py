"""Hessian-vector products of a loss callable at theta, for the exact (second-order) MetaAlign step.

Two methods: double backward (exact, where every op of the graph can be differentiated twice) and a central
finite difference (2 extra forward/backward passes; always available). ``"auto"`` tries the first and falls
back to the second, logged once per process, when autograd cannot differentiate the inner loss twice
(torchvision's roi_align, @once_differentiable functions, ops without a double-backward formula).
Torch only.
"""
import logging
from typing import List

import torch

from .autodiff import _eval_loss, _grad, _zeros_for_unused
from .buffers import StepBuffers
from .grad_stats import _global_sq_norm

__all__ = ["HVP_MODES"]

logger = logging.getLogger(__name__)

HVP_MODES = ("auto", "double_backward", "finite_difference")

# Lower bound for ||v|| in the finite-difference step size (only guards the division; v == 0 is
# short-cut to H v = 0 before it is used).
_TINY = 1e-30

# Substrings (lower-case) of RuntimeErrors that mean "this graph cannot be differentiated twice".
# torchvision roi_align: "double backwards on roi_align not supported"; @once_differentiable:
# "trying to differentiate twice ..."; aten ops without a double-backward formula: "the derivative for
# '...' is not implemented"; a gradient with no graph: "... does not require grad ...".
_DOUBLE_BACKWARD_ERROR_PATTERNS = (
    "double backward",
    "differentiate twice",
    "not implemented",
    "not supported",
    "does not require grad",
    "does not have a grad_fn",
)

# Autograd node types (``type(grad_fn).__name__``) that raise only when *executed*. torch.autograd.grad
# with ``inputs=`` prunes nodes that have no path to the inputs, and the DelayedError node that
# @once_differentiable attaches has none, so its term would be dropped silently (checked on torch 2.14:
# the HVP comes out wrong, no error). The double-backward path therefore looks for them first.
_ERROR_NODE_NAMES = frozenset({"Error", "DelayedError", "NotImplemented"})

_fallback_logged = False


class _DoubleBackwardUnavailable(RuntimeError):
    """The inner loss's graph cannot give an exact Hessian-vector product by double backward."""


def _hvp(inner_fn, inner_name, names, theta, v, mode, fd_eps, loss_scale, lazy=False, work=None):
    """H_inner(theta) v as a list of tensors, and the method used.

    ``lazy``: no host sync (the finite-difference step size stays on the device; v = 0 is not short-cut).
    ``work``: a :class:`~.buffers.StepBuffers` whose ``"theta_prime"`` slot the finite difference writes
    theta +- eps v into (else a fresh one).
    """
    if mode in ("auto", "double_backward"):
        try:
            return _hvp_double_backward(inner_fn, inner_name, names, theta, v, loss_scale,
                                        strict=mode == "auto"), "double_backward"
        except RuntimeError as err:
            oom = getattr(torch, "OutOfMemoryError", None)
            if mode == "double_backward" or (oom is not None and isinstance(err, oom)) \
                    or not _is_double_backward_error(err):
                raise
            _log_fallback_once(inner_name, err)
    return _hvp_finite_difference(inner_fn, inner_name, names, theta, v, fd_eps, loss_scale, lazy, work), \
        "finite_difference"


def _is_double_backward_error(err: RuntimeError) -> bool:
    if isinstance(err, _DoubleBackwardUnavailable):
        return True
    msg = str(err).lower()
    return any(p in msg for p in _DOUBLE_BACKWARD_ERROR_PATTERNS)


def _log_fallback_once(inner_name: str, err: RuntimeError) -> None:
    global _fallback_logged
    if _fallback_logged:
        return
    _fallback_logged = True
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    logger.info("MetaAlign second order: %s cannot be differentiated twice (%s); using a central "
                "finite-difference Hessian-vector product (2 extra forward/backward passes). Logged once.",
                inner_name, first_line)


def _graph_has_error_node(roots: List[torch.Tensor]) -> bool:
    """True if the autograd graph behind ``roots`` holds a node that only raises when executed."""
    seen = set()
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in _ERROR_NODE_NAMES:
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


def _hvp_double_backward(inner_fn, inner_name, names, theta, v, loss_scale, strict):
    """H v = d<grad L_inner(theta), v>/d theta: 1 forward + 1 create_graph backward + 1 double backward.

    ``strict`` (hvp="auto"): an inner gradient with no graph at all is treated as "cannot tell" and
    raises (so "auto" falls back to finite differences). Otherwise gradients without a graph are
    constants in theta and contribute zero, which is exact for a loss linear in the params.
    """
    loss = _eval_loss(inner_fn, dict(zip(names, theta)), inner_name)
    g = _grad(loss, theta, loss_scale, create_graph=True)
    del loss
    live = [(gi, vi) for gi, vi in zip(g, v) if gi is not None and gi.requires_grad]
    if not live:
        if strict:
            raise _DoubleBackwardUnavailable(f"the gradient of {inner_name} does not require grad")
        return [torch.zeros_like(t) for t in theta]
    if _graph_has_error_node([gi for gi, _ in live]):
        raise _DoubleBackwardUnavailable(
            f"the graph of grad {inner_name} holds a node that cannot be differentiated twice (e.g. a "
            "@once_differentiable function); torch.autograd.grad would silently drop its term")
    dot = sum((gi * vi).sum() for gi, vi in live)
    hv = torch.autograd.grad(dot, theta, allow_unused=True)
    return _zeros_for_unused(list(hv), theta)


def _hvp_finite_difference(inner_fn, inner_name, names, theta, v, fd_eps, loss_scale, lazy=False, work=None):
    """(grad L_inner(theta + eps v) - grad L_inner(theta - eps v)) / (2 eps): 2 forward + 2 backward.

    eps = fd_eps * max(||theta||, 1) / ||v||, so the perturbation ||eps v|| is fd_eps relative to the
    parameter norm (absolute fd_eps for tiny theta), whatever the scale of v. eps is a 0-d float64 tensor on
    the device. v = 0 gives H v = 0: without ``lazy`` it is short-cut (one host read of ||v||); with it the
    two passes run at theta (eps 1) and the result is multiplied by 0.
    """
    v_norm = _global_sq_norm(v).sqrt()
    if not lazy and v_norm.item() == 0.0:
        return [torch.zeros_like(t) for t in theta]
    eps = fd_eps * _global_sq_norm(theta).sqrt().clamp_min(1.0) / v_norm.clamp_min(_TINY)
    nonzero = v_norm > 0
    eps = torch.where(nonzero, eps, 1.0)
    buffers = StepBuffers() if work is None else work
    grads = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            # theta + (sign eps) v in the buffers: copy v, scale (one kernel per dtype), add theta -- a few
            # multi-tensor kernels on CUDA instead of two small kernels and an allocation per parameter
            step = _per_dtype(sign * eps)
            shifted = buffers.get("theta_prime", theta)
            torch._foreach_copy_(shifted, [x.detach() for x in v])
            for flat in buffers.flat("theta_prime"):
                flat.mul_(step(flat.dtype))
            torch._foreach_add_(shifted, [t.detach() for t in theta])
            shifted = [b.detach().requires_grad_(True) for b in shifted]
        loss = _eval_loss(inner_fn, dict(zip(names, shifted)), inner_name)
        grads.append(_grad(loss, shifted, loss_scale))
        del loss, shifted
    out = []
    two_eps, keep = _per_dtype(2.0 * eps), _per_dtype(nonzero)
    for t, gp, gm in zip(theta, grads[0], grads[1]):
        if gp is None and gm is None:
            out.append(torch.zeros_like(t))
            continue
        gp = torch.zeros_like(t) if gp is None else gp
        gm = torch.zeros_like(t) if gm is None else gm
        hv = gp.sub_(gm).div_(two_eps(gp.dtype))
        out.append(hv.mul_(keep(gp.dtype)) if lazy else hv)
    return out


def _per_dtype(x: torch.Tensor):
    """``dtype -> x.to(dtype)``, cast once per dtype (one small kernel each, not one per parameter)."""
    cache = {}

    def get(dtype):
        if dtype not in cache:
            cache[dtype] = x.to(dtype)
        return cache[dtype]

    return get
