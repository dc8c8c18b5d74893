"""The MetaAlign gradient step as a pure function of parameter values (torch only).

Math (DESIGN.md section 4), for ``direction="align_first"`` (the paper: meta-train = alignment,
meta-test = detection)::

    theta' = theta - inner_lr * grad L_align(theta)
    objective(theta) = L_align(theta) + L_det(theta')

``"det_first"`` swaps the roles of the two losses. Below, ``L_inner`` is the loss that takes the inner
step and ``L_outer`` the one evaluated at ``theta'``; ``g1 = grad L_inner(theta)`` and
``g2 = grad L_outer(theta')``.

``order``  gradient returned                                   passes (forward + backward)
``none``   grad (L_align + L_det)(theta)  (the DA joint step)  1 backward of the sum (+1 with compute_cos)
``first``  g1 + g2  (official release: inner grad detached)     2: one per loss, no retained graph
``second`` g1 + (I - inner_lr * H_inner(theta)) g2  (exact)     2 + 2 for the Hessian-vector product

This module imports nothing from detectron2 or from the rest of ``metaalign_det`` so that it can be
tested, and reused, on plain torch. The loss callables receive dicts ``name -> tensor``; in the trainer
they wrap ``torch.func.functional_call`` on the detector.
"""
import logging
import math
import numbers
import re
from collections.abc import Mapping
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "meta_align_grads",
    "select_params",
    "resolve_direction",
    "ORDERS",
    "DIRECTIONS",
    "HVP_MODES",
]

logger = logging.getLogger(__name__)

ORDERS = ("none", "first", "second")
# DESIGN.md names the modes "first_order"/"second_order"; accept those spellings so config values pass
# straight through.
_ORDER_ALIASES = {"first_order": "first", "second_order": "second"}
DIRECTIONS = ("align_first", "det_first")
_DIRECTION_CHOICES = DIRECTIONS + ("alternate",)
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

GradHook = Callable[[List[torch.Tensor]], None]
LossFn = Callable[[Dict[str, torch.Tensor]], torch.Tensor]


class _DoubleBackwardUnavailable(RuntimeError):
    """The inner loss's graph cannot give an exact Hessian-vector product by double backward."""


# ----------------------------------------------------------------------------------------------------
# public helpers used by the trainer
# ----------------------------------------------------------------------------------------------------
def resolve_direction(direction: str, iteration: int) -> str:
    """Return the direction ("align_first" or "det_first") to use at ``iteration``.

    ``"align_first"`` and ``"det_first"`` are returned unchanged. ``"alternate"`` is the official release's
    schedule: it starts with the *detection* loss as meta-train, so ``"det_first"`` on even iterations
    (0, 2, ...) and ``"align_first"`` on odd ones.
    ``iteration`` is the 0-based global training iteration (an int >= 0).
    """
    if isinstance(iteration, bool) or not isinstance(iteration, numbers.Integral) or iteration < 0:
        raise ValueError(f"iteration must be an int >= 0, got {iteration!r}")
    if direction in DIRECTIONS:
        return direction
    if direction == "alternate":
        return "det_first" if int(iteration) % 2 == 0 else "align_first"
    raise ValueError(f"direction must be one of {_DIRECTION_CHOICES}, got {direction!r}")


def select_params(
    named_params: Union[Mapping, Iterable[Tuple[str, torch.Tensor]]],
    patterns: Union[str, Sequence[str], None] = (),
) -> Dict[str, torch.Tensor]:
    """Pick the fast-weight parameters by name.

    Args:
        named_params: ``model.named_parameters()`` (pairs ``(name, tensor)``) or a dict name -> tensor.
        patterns: regular expressions matched with :func:`re.search` against the names (anchor them with
            ``^...$`` for exact names); a single string is one pattern. Empty / None: every trainable
            parameter.

    Returns:
        dict name -> parameter (the same tensor objects, in ``named_params`` order) for every trainable
        (``requires_grad=True``) parameter whose name matches at least one pattern. Frozen parameters are
        never selected: a frozen BN or stem stays frozen under the meta step too.

    Raises:
        ValueError: a pattern is not a valid regex, or matches no trainable parameter (the message names
            it, and says when it matched only frozen ones); nothing trainable at all.
    """
    items = list(named_params.items() if isinstance(named_params, Mapping) else named_params)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], torch.Tensor)):
            raise ValueError(f"named_params must yield (name, tensor) pairs, got {item!r:.80}")
    trainable = [(n, p) for n, p in items if p.requires_grad]
    if not trainable:
        raise ValueError("named_params contains no trainable parameter (requires_grad=True)")
    if patterns is None:
        patterns = ()
    if isinstance(patterns, str):
        patterns = (patterns,)
    if not patterns:
        return dict(trainable)

    compiled = []
    for pat in patterns:
        if not isinstance(pat, str):
            raise ValueError(f"patterns must be regex strings, got {pat!r}")
        try:
            compiled.append(re.compile(pat))
        except re.error as err:
            raise ValueError(f"patterns: invalid regular expression {pat!r}: {err}") from None
    for pat, rx in zip(patterns, compiled):
        if not any(rx.search(n) for n, _ in trainable):
            frozen = [n for n, p in items if not p.requires_grad and rx.search(n)]
            extra = f" (it matches only frozen parameters, e.g. {frozen[0]!r})" if frozen else ""
            raise ValueError(f"patterns: regex {pat!r} matches no trainable parameter{extra}")
    return {n: p for n, p in trainable if any(rx.search(n) for rx in compiled)}


# ----------------------------------------------------------------------------------------------------
# the step
# ----------------------------------------------------------------------------------------------------
def meta_align_grads(
    params: Mapping,
    align_loss: LossFn,
    det_loss: LossFn,
    inner_lr: float,
    order: str = "first",
    direction: str = "align_first",
    hvp: str = "auto",
    fd_eps: float = 1e-3,
    loss_scale: float = 1.0,
    inner_grad_hook: Optional[GradHook] = None,
    compute_cos: Optional[bool] = None,
    outer_grad_hook: Optional[GradHook] = None,
    fast: Optional[Iterable[str]] = None,
) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Gradient of the MetaAlign objective (or of the plain joint loss) w.r.t. ``params``.

    Args:
        params: dict name -> tensor, the current theta. Not mutated and no ``.grad`` is written: the
            function differentiates w.r.t. its own detached leaves, so ``requires_grad`` may be False.
        align_loss, det_loss: callables ``p -> scalar tensor`` evaluating the (unscaled) loss at parameter
            values ``p`` (a dict with the keys of ``params``). Each call gets a fresh dict, except that in
            ``order="none"`` both are called, align first, with the *same* dict object, so a caller may
            compute both losses in one forward and cache them (compare with ``is`` against a held
            reference, not ``id()``, which can be reused).
        inner_lr: alpha >= 0, the inner (fast-weight) step size in parameter units per gradient unit
            (DESIGN.md: meta_lr x current lr).
        order: "none", "first" or "second" (aliases "first_order", "second_order"); see the module doc.
        direction: "align_first" (inner step on L_align, paper) or "det_first" (roles swapped).
            "alternate" must be resolved per iteration first, with :func:`resolve_direction`.
        hvp: how ``order="second"`` computes H_inner(theta) v with v = g2:
            "double_backward": re-evaluate L_inner(theta) with ``create_graph=True`` and differentiate
            <grad L_inner, v> (1 forward + 1 backward + 1 double backward; raises if the graph cannot be
            differentiated twice). "finite_difference": central difference
            (grad L_inner(theta + eps v) - grad L_inner(theta - eps v)) / (2 eps) with
            ``eps = fd_eps * max(||theta||, 1) / ||v||`` (global L2 norms over all params), i.e. theta is
            moved by ``fd_eps`` relative to its own norm, which balances the O(eps^2) truncation error
            against round-off (2 forward + 2 backward). "auto": double backward, falling back to finite
            differences when autograd cannot differentiate the inner loss twice (torchvision's roi_align,
            @once_differentiable functions, ops without a double-backward formula); the fallback is
            logged once per process. "auto" retries double backward on every call, which wastes one
            forward+backward when it fails: a caller that knows its inner loss goes through roi_align can
            feed ``stats["hvp"]`` back (per direction) to skip the attempt. Ignored unless order="second".
        fd_eps: relative finite-difference step (> 0), see ``hvp``.
        loss_scale: > 0; each loss is multiplied by it before every backward (fp16 GradScaler) and the
            gradients are divided by it right after, so the inner step, the HVP and the returned grads
            all use unscaled gradients.
        inner_grad_hook: optional ``hook(list_of_tensors) -> None`` called on g1 (unscaled, one tensor
            per param in ``params`` order) and modifying it in place, before theta' is formed. The trainer
            all-reduces (averages) g1 across processes here so that theta', and hence the whole step,
            equal one process with the global batch. The hooked g1 is also the g1 term of the result. It
            is called before the finite check, so every process joins the collective even when its own
            gradient overflowed (the reduced gradient is then non-finite on every process alike).
        compute_cos: compute ``grad_cos`` and the two norms. Free for meta orders (default True there);
            for ``order="none"`` it costs a second backward: align and det are then differentiated
            separately (the first with ``retain_graph=True``) instead of one backward of the sum, so the
            default there is False.
        outer_grad_hook: like ``inner_grad_hook`` but for g2 (before the HVP and the sum). Only needed
            for an exact second-order step under DDP, where the HVP must act on the all-reduced g2; the
            first-order step is exact with a plain all-reduce of the result.
        fast: names of the params that take the inner (fast-weight) step; default all. The others keep
            theta in theta' but still get the full gradient: theta' = theta - inner_lr * P g1 with P the
            0/1 mask, so the second-order term is -inner_lr * H_inner (P g2).

    Returns:
        ``(grads, stats)``. ``grads``: dict name -> gradient, same shape/dtype/device as the param; a
        param that a loss does not touch gets zero from that loss. ``stats`` (python scalars, no extra
        backward):

        - ``grad_cos``: cosine of grad L_align and the detection gradient over the params both touch
          (align_first: g1 vs g2; det_first: g2 vs g1; none: both at theta). NaN when undefined (no shared
          param, a zero gradient, compute_cos False, non-finite inner step).
        - ``align_grad_norm``, ``det_grad_norm``: L2 norms of those two gradients over all params.
        - ``align_loss``, ``det_loss``: unscaled loss values. Meta orders: the inner loss at theta and the
          outer loss at theta' (align_first: L_align(theta), L_det(theta')). ``none``: both at theta.
        - ``inner_lr``, ``order``, ``direction`` (None for "none"), ``hvp`` ("double_backward",
          "finite_difference" or None when no HVP was computed).
        - ``finite``: all returned gradients are finite. When the inner gradient is not, the inner step
          is NOT taken: ``grads`` is g1 itself (with its non-finite values) and the outer loss is never
          evaluated; the caller decides (GradScaler skips the step, fp32 training raises).

    Raises:
        ValueError: bad arguments (unknown order/direction/hvp, inner_lr < 0, empty params, ...), or a
            loss callable returned something other than a floating-point scalar tensor.
    """
    order, direction, hvp, inner_lr, fd_eps, loss_scale = _validate(
        params, align_loss, det_loss, inner_lr, order, direction, hvp, fd_eps, loss_scale,
        inner_grad_hook, outer_grad_hook, compute_cos,
    )
    names = list(params.keys())
    if fast is not None:
        fast = set(fast)
        unknown = sorted(fast - set(names))
        if unknown:
            raise ValueError(f"fast names parameters not in params: {unknown[:5]}")
    mask = [fast is None or k in fast for k in names]
    # Own leaves: detach() shares storage (no copy) but gives new autograd leaves, so the caller's
    # tensors, their requires_grad flags and their .grad stay untouched.
    theta = [params[k].detach().requires_grad_(True) for k in names]

    if order == "none":
        # compute_cos defaults to False here: it costs a second backward (see the docstring).
        return _joint_step(names, theta, align_loss, det_loss, inner_lr, loss_scale, bool(compute_cos))
    compute_cos = True if compute_cos is None else bool(compute_cos)

    if direction == "align_first":
        inner_fn, inner_name, outer_fn, outer_name = align_loss, "align_loss", det_loss, "det_loss"
    else:
        inner_fn, inner_name, outer_fn, outer_name = det_loss, "det_loss", align_loss, "align_loss"

    # 1. inner gradient g1 at theta: one backward, no graph kept.
    l_in = _eval_loss(inner_fn, dict(zip(names, theta)), inner_name)
    g1_raw = _grad(l_in, theta, loss_scale)
    l_in = l_in.detach()
    g1 = _zeros_for_unused(g1_raw, theta)
    _call_hook(inner_grad_hook, g1, "inner_grad_hook")
    if not _all_finite(g1):
        return _non_finite_inner(names, g1, l_in, inner_name, inner_lr, order, direction)

    # 2. outer gradient g2 at theta' = theta - inner_lr * g1 (a constant for autograd: first-order
    # treatment; the second-order correction is added explicitly below).
    with torch.no_grad():
        theta_prime = [((t - inner_lr * g) if m else t.detach().clone()).requires_grad_(True)
                       for t, g, m in zip(theta, g1, mask)]
    l_out = _eval_loss(outer_fn, dict(zip(names, theta_prime)), outer_name)
    g2_raw = _grad(l_out, theta_prime, loss_scale)
    l_out = l_out.detach()
    del theta_prime
    g2 = _zeros_for_unused(g2_raw, theta)
    _call_hook(outer_grad_hook, g2, "outer_grad_hook")

    # Stats before g1 is reused in place for the sum (scalar tensors only, read in one sync at the end).
    touched_in = [g is not None for g in g1_raw]
    touched_out = [g is not None for g in g2_raw]
    del g1_raw, g2_raw
    g_align, g_det = (g1, g2) if direction == "align_first" else (g2, g1)
    t_align, t_det = (touched_in, touched_out) if direction == "align_first" else (touched_out, touched_in)
    cos_terms = _cos_terms(g_align, g_det, t_align, t_det) if compute_cos else None

    hvp_used = None
    hv = None
    if order == "second" and _all_finite(g2):
        # needs grad mode: it re-evaluates the inner loss and differentiates it
        v = g2 if all(mask) else [g if m else torch.zeros_like(g) for g, m in zip(g2, mask)]
        hv, hvp_used = _hvp(inner_fn, inner_name, names, theta, v, hvp, fd_eps, loss_scale)
        del v
    with torch.no_grad():
        total = g1  # reuse g1's memory: g1 + g2 - inner_lr * H v
        for i, (a, b) in enumerate(zip(total, g2)):
            a.add_(b)
            if hv is not None:
                a.add_(hv[i], alpha=-inner_lr)
    del g2, g1, hv

    losses = {inner_name: l_in, outer_name: l_out}
    stats = _finish_stats(cos_terms, losses["align_loss"], losses["det_loss"], total)
    stats.update(inner_lr=inner_lr, order=order, direction=direction, hvp=hvp_used)
    return dict(zip(names, total)), stats


# ----------------------------------------------------------------------------------------------------
# internals
# ----------------------------------------------------------------------------------------------------
def _validate(params, align_loss, det_loss, inner_lr, order, direction, hvp, fd_eps, loss_scale,
              inner_grad_hook, outer_grad_hook, compute_cos):
    if not isinstance(params, Mapping) or len(params) == 0:
        raise ValueError(f"params must be a non-empty dict name -> tensor, got {type(params).__name__}"
                         f"{' (empty)' if isinstance(params, Mapping) else ''}")
    for k, v in params.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise ValueError(f"params[{k!r}] must be a floating-point tensor, got "
                             f"{v.dtype if isinstance(v, torch.Tensor) else type(v).__name__}")
    for name, fn in (("align_loss", align_loss), ("det_loss", det_loss)):
        if not callable(fn):
            raise ValueError(f"{name} must be a callable p -> scalar loss, got {type(fn).__name__}")
    for name, fn in (("inner_grad_hook", inner_grad_hook), ("outer_grad_hook", outer_grad_hook)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be None or a callable(list_of_tensors), got {type(fn).__name__}")
    if not isinstance(order, str) or _ORDER_ALIASES.get(order, order) not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} (or {tuple(_ORDER_ALIASES)}), got {order!r}")
    order = _ORDER_ALIASES.get(order, order)
    if direction == "alternate":
        raise ValueError("direction 'alternate' depends on the iteration: resolve it with "
                         "resolve_direction(direction, iteration) and pass 'align_first' or 'det_first'")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if hvp not in HVP_MODES:
        raise ValueError(f"hvp must be one of {HVP_MODES}, got {hvp!r}")
    inner_lr = _real(inner_lr, "inner_lr")
    if inner_lr < 0:
        raise ValueError(f"inner_lr must be >= 0, got {inner_lr}")
    fd_eps = _real(fd_eps, "fd_eps")
    if fd_eps <= 0:
        raise ValueError(f"fd_eps must be > 0, got {fd_eps}")
    loss_scale = _real(loss_scale, "loss_scale")
    if loss_scale <= 0:
        raise ValueError(f"loss_scale must be > 0, got {loss_scale}")
    if compute_cos is not None and not isinstance(compute_cos, bool):
        raise ValueError(f"compute_cos must be None or a bool, got {compute_cos!r}")
    return order, direction, hvp, inner_lr, fd_eps, loss_scale


def _real(x, name: str) -> float:
    """``x`` as a finite python float (accepts numbers and one-element tensors, not bools)."""
    if isinstance(x, bool):
        raise ValueError(f"{name} must be a finite real number, got {x!r}")
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a finite real number, got a tensor of shape {tuple(x.shape)}")
        x = x.item()
    if not isinstance(x, numbers.Real) or not math.isfinite(float(x)):
        raise ValueError(f"{name} must be a finite real number, got {x!r}")
    return float(x)


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


def _grad(loss: torch.Tensor, leaves: List[torch.Tensor], scale: float, create_graph: bool = False,
          retain_graph: Optional[bool] = None) -> List[Optional[torch.Tensor]]:
    """Unscaled ``d(scale * loss) / d leaves``; None for a leaf the loss does not touch."""
    if not loss.requires_grad:  # the loss does not depend on any leaf (e.g. no target instances)
        return [None] * len(leaves)
    scaled = loss * scale if scale != 1.0 else loss
    grads = torch.autograd.grad(scaled, leaves, allow_unused=True, create_graph=create_graph,
                                retain_graph=retain_graph)
    if scale == 1.0:
        return list(grads)
    if create_graph:
        return [None if g is None else g / scale for g in grads]
    return [None if g is None else g.div_(scale) for g in grads]


def _zeros_for_unused(grads: List[Optional[torch.Tensor]], like: List[torch.Tensor]) -> List[torch.Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


def _call_hook(hook: Optional[GradHook], grads: List[torch.Tensor], name: str) -> None:
    if hook is None:
        return
    with torch.no_grad():
        out = hook(grads)
    if out is not None:
        raise ValueError(f"{name} must modify the gradient list in place and return None, "
                         f"got {type(out).__name__}")


def _all_finite(tensors: List[torch.Tensor]) -> bool:
    """One host sync for the whole list."""
    flags = [torch.isfinite(t).all().to(tensors[0].device) for t in tensors]
    return bool(torch.stack(flags).all().item())


def _acc(t: torch.Tensor) -> torch.Tensor:
    """View of ``t`` in a dtype fit for accumulating norms/dots (fp16/bf16 -> fp32), flattened."""
    t = t.detach().reshape(-1)
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _sum64(terms: List[torch.Tensor], device) -> torch.Tensor:
    if not terms:
        return torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack([x.to(device=device, dtype=torch.float64) for x in terms]).sum()


def _cos_terms(g_align, g_det, t_align, t_det) -> Dict[str, torch.Tensor]:
    """0-d float64 tensors: <a,d>, ||a||^2, ||d||^2 over shared params, and the full squared norms."""
    dev = g_align[0].device
    shared = [i for i in range(len(g_align)) if t_align[i] and t_det[i]]
    # one squared norm per parameter, summed over both index sets (not recomputed for the shared subset)
    sq_a = [torch.dot(_acc(g), _acc(g)) for g in g_align]
    sq_d = [torch.dot(_acc(g), _acc(g)) for g in g_det]
    return {
        "dot": _sum64([torch.dot(_acc(g_align[i]), _acc(g_det[i])) for i in shared], dev),
        "aa_shared": _sum64([sq_a[i] for i in shared], dev),
        "dd_shared": _sum64([sq_d[i] for i in shared], dev),
        "aa": _sum64(sq_a, dev),
        "dd": _sum64(sq_d, dev),
    }


def _finish_stats(cos_terms, align_val, det_val, grads) -> dict:
    """Read every scalar statistic with a single device->host copy."""
    dev = grads[0].device
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=dev)
    finite = torch.stack([torch.isfinite(g).all().to(dev) for g in grads]).all()
    if cos_terms is None:
        c = {k: nan for k in ("dot", "aa_shared", "dd_shared", "aa", "dd")}
    else:
        c = cos_terms
    vals = torch.stack([
        c["dot"], c["aa_shared"], c["dd_shared"], c["aa"], c["dd"],
        align_val.detach().to(device=dev, dtype=torch.float64),
        det_val.detach().to(device=dev, dtype=torch.float64),
        finite.to(torch.float64),
    ]).tolist()
    dot, aa_s, dd_s, aa, dd, l_align, l_det, fin = vals
    denom = math.sqrt(aa_s) * math.sqrt(dd_s) if aa_s == aa_s and dd_s == dd_s else float("nan")
    cos = dot / denom if denom > 0 else float("nan")
    return {
        "grad_cos": cos,
        "align_grad_norm": math.sqrt(aa) if aa == aa else float("nan"),
        "det_grad_norm": math.sqrt(dd) if dd == dd else float("nan"),
        "align_loss": l_align,
        "det_loss": l_det,
        "finite": bool(fin),
    }


def _non_finite_inner(names, g1, l_in, inner_name, inner_lr, order, direction):
    """Return value when g1 is not finite: no inner step, grads = g1, outer quantities NaN."""
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    sq = _sum64([torch.dot(_acc(g), _acc(g)) for g in g1], g1[0].device)
    inner_is_align = inner_name == "align_loss"
    cos_terms = {"dot": nan.to(sq.device), "aa_shared": nan.to(sq.device), "dd_shared": nan.to(sq.device),
                 "aa": sq if inner_is_align else nan.to(sq.device),
                 "dd": nan.to(sq.device) if inner_is_align else sq}
    stats = _finish_stats(cos_terms, l_in if inner_is_align else nan, nan if inner_is_align else l_in, g1)
    stats.update(finite=False, inner_lr=inner_lr, order=order, direction=direction, hvp=None)
    return dict(zip(names, g1)), stats


def _joint_step(names, theta, align_loss, det_loss, inner_lr, loss_scale, compute_cos):
    """order "none": grad (L_align + L_det)(theta); both callables get the same dict object."""
    p = dict(zip(names, theta))
    l_align = _eval_loss(align_loss, p, "align_loss")
    l_det = _eval_loss(det_loss, p, "det_loss")
    cos_terms = None
    if compute_cos:
        # retain_graph: the two losses may share one forward graph (a caller-side cache).
        ga_raw = _grad(l_align, theta, loss_scale, retain_graph=True)
        l_align = l_align.detach()  # drop the retained graph before the second backward's buffers
        gd_raw = _grad(l_det, theta, loss_scale)
        l_det = l_det.detach()
        ga, gd = _zeros_for_unused(ga_raw, theta), _zeros_for_unused(gd_raw, theta)
        cos_terms = _cos_terms(ga, gd, [g is not None for g in ga_raw], [g is not None for g in gd_raw])
        del ga_raw, gd_raw
        with torch.no_grad():
            for a, d in zip(ga, gd):
                a.add_(d)
        total = ga
    else:
        total = _zeros_for_unused(_grad(l_align + l_det, theta, loss_scale), theta)
        l_align, l_det = l_align.detach(), l_det.detach()
    stats = _finish_stats(cos_terms, l_align, l_det, total)
    stats.update(inner_lr=inner_lr, order="none", direction=None, hvp=None)
    return dict(zip(names, total)), stats


def _global_norm(tensors: List[torch.Tensor]) -> float:
    dev = tensors[0].device
    return math.sqrt(_sum64([torch.dot(_acc(t), _acc(t)) for t in tensors], dev).item())


def _hvp(inner_fn, inner_name, names, theta, v, mode, fd_eps, loss_scale):
    """H_inner(theta) v as a list of tensors, and the method used."""
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
    return _hvp_finite_difference(inner_fn, inner_name, names, theta, v, fd_eps, loss_scale), \
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


def _hvp_finite_difference(inner_fn, inner_name, names, theta, v, fd_eps, loss_scale):
    """(grad L_inner(theta + eps v) - grad L_inner(theta - eps v)) / (2 eps): 2 forward + 2 backward.

    eps = fd_eps * max(||theta||, 1) / ||v||, so the perturbation ||eps v|| is fd_eps relative to the
    parameter norm (absolute fd_eps for tiny theta), whatever the scale of v.
    """
    v_norm = _global_norm(v)
    if v_norm == 0.0:
        return [torch.zeros_like(t) for t in theta]
    eps = fd_eps * max(_global_norm(theta), 1.0) / max(v_norm, _TINY)
    grads = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            shifted = [(t + (sign * eps) * vi).requires_grad_(True) for t, vi in zip(theta, v)]
        loss = _eval_loss(inner_fn, dict(zip(names, shifted)), inner_name)
        grads.append(_grad(loss, shifted, loss_scale))
        del loss, shifted
    out = []
    for t, gp, gm in zip(theta, grads[0], grads[1]):
        if gp is None and gm is None:
            out.append(torch.zeros_like(t))
            continue
        gp = torch.zeros_like(t) if gp is None else gp
        gm = torch.zeros_like(t) if gm is None else gm
        out.append(gp.sub_(gm).div_(2.0 * eps))
    return out
