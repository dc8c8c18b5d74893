"""The MetaAlign gradient step as a pure function of parameter values (torch only).

Math (docs/metaalign_step.md, with how it relates to the authors' code), for ``direction="align_first"``
(the paper: meta-train = alignment, meta-test = detection)::

    theta' = theta - inner_lr * grad L_align(theta)
    objective(theta) = L_align(theta) + L_det(theta')

``"det_first"`` swaps the roles of the two losses. Below, ``L_inner`` is the loss that takes the inner
step and ``L_outer`` the one evaluated at ``theta'``; ``g1 = grad L_inner(theta)`` and
``g2 = grad L_outer(theta')``.

``order``  gradient returned                                   passes (forward + backward)
``none``   grad (L_align + L_det)(theta)  (the DA joint step)  1 backward of the sum (+1 with compute_cos)
``first``  g1 + g2  (official release: inner grad detached)     2: one per loss, no retained graph
``second`` g1 + (I - inner_lr * H_inner(theta)) g2  (exact)     2 + 2 for the Hessian-vector product

The package ``metaalign_det.meta`` (this module, :mod:`.hvp` for the Hessian-vector products,
:mod:`.grad_stats` for the gradient statistics, :mod:`.autodiff` for the loss-gradient helpers) imports
nothing from detectron2 or from the rest of ``metaalign_det`` so that it can be tested, and reused, on plain
torch. The loss callables receive dicts ``name -> tensor``; in the trainer they wrap
``torch.func.functional_call`` on the detector.
"""
import math
import numbers
import re
from collections.abc import Mapping
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .autodiff import LossFn, _eval_loss, _grad, _zeros_for_unused
from .buffers import StepBuffers
from .grad_stats import (
    _acc,
    _all_finite,
    _cos_terms,
    _stats_tensors,
    _sum64,
    finite_flag,
    materialize_stats,
)
from .hvp import HVP_MODES, _hvp

__all__ = [
    "meta_align_grads",
    "select_params",
    "resolve_direction",
    "ORDERS",
    "DIRECTIONS",
]

ORDERS = ("none", "first", "second")
# The config (META.MODE) names the modes "first_order"/"second_order"; accept those spellings so config
# values pass straight through.
_ORDER_ALIASES = {"first_order": "first", "second_order": "second"}
DIRECTIONS = ("align_first", "det_first")
_DIRECTION_CHOICES = DIRECTIONS + ("alternate",)

GradHook = Callable[[List[torch.Tensor]], None]


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
    loss_scale: Union[float, torch.Tensor] = 1.0,
    inner_grad_hook: Optional[GradHook] = None,
    compute_cos: Optional[bool] = None,
    outer_grad_hook: Optional[GradHook] = None,
    fast: Optional[Iterable[str]] = None,
    lazy_stats: bool = False,
    buffers: Optional[StepBuffers] = None,
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
            (the authors' meta_lr x current lr; the trainer passes META.INNER_LR_SCALE x lr).
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
            all use unscaled gradients. A python number (checked), or a one-element floating tensor on the
            losses' device, used without reading it to the host (the caller vouches that it is finite, > 0).
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
        lazy_stats: keep every statistic on the device and never read a value to the host inside the step
            (on a GPU each read stalls the host until all queued kernels have run). The numeric entries of
            ``stats`` (``grad_cos``, the norms, the losses, ``finite``) are then 0-d tensors on the
            parameters' device (float64; ``finite`` bool); :func:`~metaalign_det.meta.grad_stats.
            materialize_stats` reads them all with one copy. Without a host-side branch, a non-finite inner
            gradient cannot skip the outer evaluation: theta' is then theta (no inner step, selected on the
            device), the outer loss is evaluated there, the Hessian-vector product acts on a zero vector,
            and the returned gradients, which include g1, are non-finite (``finite`` False). The gradients
            of a finite step equal those of ``lazy_stats=False``.
        buffers: a :class:`~metaalign_det.meta.buffers.StepBuffers` kept by the caller across steps: theta'
            (and theta +- eps v, and the masked v of a second-order step) are written into its tensors
            instead of fresh ones. The results are the same as without (then a fresh set is allocated per
            call). Ignored for ``order="none"``.

    Returns:
        ``(grads, stats)``. ``grads``: dict name -> gradient, same shape/dtype/device as the param; a
        param that a loss does not touch gets zero from that loss. ``stats`` (python scalars, or 0-d
        tensors with ``lazy_stats``; no extra backward):

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
          evaluated (``lazy_stats``: see there); the caller decides (GradScaler skips the step, fp32
          training raises).

    Raises:
        ValueError: bad arguments (unknown order/direction/hvp, inner_lr < 0, empty params, ...), or a
            loss callable returned something other than a floating-point scalar tensor.
    """
    order, direction, hvp, inner_lr, fd_eps, loss_scale = _validate(
        params, align_loss, det_loss, inner_lr, order, direction, hvp, fd_eps, loss_scale,
        inner_grad_hook, outer_grad_hook, compute_cos,
    )
    lazy_stats = bool(lazy_stats)
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
        return _joint_step(names, theta, align_loss, det_loss, inner_lr, loss_scale, bool(compute_cos),
                           lazy_stats)
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
    ok_inner = finite_flag(g1)  # on the device; read to the host only without lazy_stats
    if not lazy_stats and not bool(ok_inner):
        return _non_finite_inner(names, g1, l_in, inner_name, inner_lr, order, direction)

    # 2. outer gradient g2 at theta' = theta - inner_lr * g1 (a constant for autograd: first-order
    # treatment; the second-order correction is added explicitly below).
    if buffers is None:
        buffers = StepBuffers()  # fresh tensors for this call only
    theta_prime = _inner_step(theta, g1, mask, inner_lr, ok_inner if lazy_stats else None, buffers)
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
    if order == "second":
        v = None
        if lazy_stats:
            # no host branch: a non-finite g1 or g2 gives v = 0 (the result is non-finite through g1/g2)
            v = _masked(g2, mask, buffers, ok_inner & finite_flag(g2))
        elif _all_finite(g2):
            v = g2 if all(mask) else _masked(g2, mask, buffers)
        if v is not None:
            # needs grad mode: it re-evaluates the inner loss and differentiates it
            hv, hvp_used = _hvp(inner_fn, inner_name, names, theta, v, hvp, fd_eps, loss_scale,
                                lazy=lazy_stats, work=buffers)
        del v
    with torch.no_grad():
        total = g1  # reuse g1's memory: g1 + g2 - inner_lr * H v
        torch._foreach_add_(total, g2)
        if hv is not None:
            torch._foreach_add_(total, hv, alpha=-inner_lr)
    del g2, g1, hv

    losses = {inner_name: l_in, outer_name: l_out}
    stats = _stats_tensors(cos_terms, losses["align_loss"], losses["det_loss"], finite_flag(total))
    if not lazy_stats:
        stats = materialize_stats(stats)
    stats.update(inner_lr=inner_lr, order=order, direction=direction, hvp=hvp_used)
    return dict(zip(names, total)), stats


def _inner_step(theta, g1, mask, inner_lr, keep_if, buffers):
    """theta' = theta - inner_lr * g1 on the ``mask``ed params (theta elsewhere), written into the
    ``"theta_prime"`` buffers and returned as new autograd leaves sharing their storage.

    ``keep_if``: optional 0-d bool tensor; where False, theta' = theta (selected on the device, no sync).
    Computed as (-inner_lr * g1) + theta, bitwise equal to ``theta - inner_lr * g1``; every operation is one
    multi-tensor kernel (CUDA) or one kernel per dtype, none per parameter.
    """
    out = buffers.get("theta_prime", theta)
    with torch.no_grad():
        _select_into(out, g1, mask, buffers.flat("theta_prime"), keep_if)  # g1 (fast) or 0
        torch._foreach_mul_(out, -inner_lr)
        torch._foreach_add_(out, [t.detach() for t in theta])
    return [b.detach().requires_grad_(True) for b in out]


def _masked(g, mask, buffers, keep_if=None):
    """``g`` on the ``mask``ed params and 0 elsewhere, in the ``"v"`` buffers; where the 0-d bool ``keep_if``
    is False, 0 everywhere (on the device)."""
    out = buffers.get("v", g)
    with torch.no_grad():
        _select_into(out, g, mask, buffers.flat("v"), keep_if)
    return out


def _select_into(out, g, mask, flats, keep_if):
    """out = g on masked params, 0 elsewhere; all 0 (NaN/inf removed) where ``keep_if`` is False."""
    fast = [i for i, m in enumerate(mask) if m]
    slow = [i for i, m in enumerate(mask) if not m]
    if fast:
        torch._foreach_copy_([out[i] for i in fast], [g[i].detach() for i in fast])
    if slow:
        torch._foreach_zero_([out[i] for i in slow])
    if keep_if is not None:
        for flat in flats:  # one select per dtype group: where(ok, x, 0) also drops NaN, unlike ok * x
            torch.where(keep_if, flat, torch.zeros((), dtype=flat.dtype, device=flat.device), out=flat)


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
    if isinstance(loss_scale, torch.Tensor) and loss_scale.is_floating_point() and loss_scale.numel() == 1:
        # the GradScaler's scale on the device: kept there (reading it would sync the host every step); the
        # scaler keeps it finite and > 0
        loss_scale = loss_scale.reshape(())
    else:
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


def _call_hook(hook: Optional[GradHook], grads: List[torch.Tensor], name: str) -> None:
    if hook is None:
        return
    with torch.no_grad():
        out = hook(grads)
    if out is not None:
        raise ValueError(f"{name} must modify the gradient list in place and return None, "
                         f"got {type(out).__name__}")


def _non_finite_inner(names, g1, l_in, inner_name, inner_lr, order, direction):
    """Return value when g1 is not finite: no inner step, grads = g1, outer quantities NaN."""
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    sq = _sum64([torch.dot(_acc(g), _acc(g)) for g in g1], g1[0].device)
    inner_is_align = inner_name == "align_loss"
    cos_terms = {"dot": nan.to(sq.device), "aa_shared": nan.to(sq.device), "dd_shared": nan.to(sq.device),
                 "aa": sq if inner_is_align else nan.to(sq.device),
                 "dd": nan.to(sq.device) if inner_is_align else sq}
    stats = materialize_stats(_stats_tensors(cos_terms, l_in if inner_is_align else nan,
                                             nan if inner_is_align else l_in, finite_flag(g1)))
    stats.update(finite=False, inner_lr=inner_lr, order=order, direction=direction, hvp=None)
    return dict(zip(names, g1)), stats


def _joint_step(names, theta, align_loss, det_loss, inner_lr, loss_scale, compute_cos, lazy_stats):
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
            torch._foreach_add_(ga, gd)
        total = ga
    else:
        total = _zeros_for_unused(_grad(l_align + l_det, theta, loss_scale), theta)
        l_align, l_det = l_align.detach(), l_det.detach()
    stats = _stats_tensors(cos_terms, l_align, l_det, finite_flag(total))
    if not lazy_stats:
        stats = materialize_stats(stats)
    stats.update(inner_lr=inner_lr, order="none", direction=None, hvp=None)
    return dict(zip(names, total)), stats
