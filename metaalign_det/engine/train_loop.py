"""The training step: detectron2 ``SimpleTrainer`` / ``AMPTrainer`` subclasses whose ``run_step`` takes a
(source, target) batch pair and gets its gradients from :func:`metaalign_det.meta.meta_align_grads` --
one step function for every mode (``none`` = plain joint DA, ``first_order``, ``second_order``).

``run_step`` is split into small overridable pieces (ALDI style): ``compute_gradients`` (the meta step),
``assign_gradients`` (one all-reduce, then ``p.grad``), ``write_step_metrics`` and ``optimizer_step``.
The AMP subclass only changes the autocast context, the loss scale and the optimizer step.

Divergence never reaches a checkpoint: a step stops training (FloatingPointError, one line) before the
update when its gradients or losses are non-finite (``check_finite``), and after the update -- still inside
``run_step``, so before the checkpoint hook of that iteration runs -- when the updated weights are
non-finite or one update grew their norm more than ``max_weight_norm_growth`` times (``check_update``).
"""
import contextlib
import logging
import math
import time
from typing import Any, ContextManager, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .. import compat
from ..meta import meta_align_grads, resolve_direction, select_params
from .distributed import all_reduce_mean_, world_size
from .loss_evaluator import LossEvaluator

__all__ = ["MetaAlignStepOptions", "MetaAlignSimpleTrainer", "MetaAlignAMPTrainer"]

logger = logging.getLogger(__name__)

_ORDER = {"none": "none", "first_order": "first", "second_order": "second"}


class MetaAlignStepOptions:
    """The META.* settings the step needs, validated once (one clear error per bad key)."""

    def __init__(self, mode: str = "none", direction: str = "align_first", inner_lr_scale: float = 10.0,
                 params: Sequence[str] = (), hvp: str = "auto", fd_eps: float = 1e-3,
                 joint_grad_cos_period: int = 20) -> None:
        if mode not in _ORDER:
            raise ValueError(f"META.MODE must be one of {sorted(_ORDER)}, got {mode!r}")
        if direction not in ("align_first", "det_first", "alternate"):
            raise ValueError(
                f"META.DIRECTION must be 'align_first', 'det_first' or 'alternate', got {direction!r}"
            )
        if hvp not in ("auto", "double_backward", "finite_difference"):
            raise ValueError(
                f"META.HVP must be 'auto', 'double_backward' or 'finite_difference', got {hvp!r}"
            )
        if inner_lr_scale < 0:
            raise ValueError(f"META.INNER_LR_SCALE must be >= 0, got {inner_lr_scale}")
        self.mode, self.direction, self.inner_lr_scale = mode, direction, float(inner_lr_scale)
        self.params, self.hvp, self.fd_eps = list(params), hvp, float(fd_eps)
        self.joint_grad_cos_period = int(joint_grad_cos_period)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "MetaAlignStepOptions":
        m = cfg.META
        return cls(m.MODE, m.DIRECTION, m.INNER_LR_SCALE, m.PARAMS, m.HVP, m.FD_EPS,
                   m.JOINT_GRAD_COS_PERIOD)


class MetaAlignSimpleTrainer(SimpleTrainer):
    """SimpleTrainer over a paired loader whose gradient is the MetaAlign meta-gradient (or the joint one).

    Attributes:
        max_weight_norm_growth: an update that makes the 2-norm of the trainable weights more than this many
            times larger is divergence (healthy SGD steps change it by well under 1%); ``None`` disables the
            growth test (non-finite weights still stop training).
    """

    max_weight_norm_growth: Optional[float] = 10.0

    def __init__(self, model: torch.nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                 options: Optional[MetaAlignStepOptions] = None, seed: Optional[int] = None) -> None:
        # Not super(): in the AMP subclass the MRO's next class is AMPTrainer (see compat.init_step_trainer);
        # MetaAlignAMPTrainer builds its own GradScaler.
        compat.init_step_trainer(self, model, data_loader, optimizer)
        self.options = options or MetaAlignStepOptions()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        # Every trainable parameter gets a gradient; META.PARAMS only restricts which ones take the inner
        # (fast-weight) step -- the rest keep θ in θ'.
        self.params = dict(named)
        self.fast = set(select_params(named, self.options.params)) if self.options.params else None
        self.last_stats: Dict[str, float] = {}
        self._hvp_known: Dict[str, str] = {}
        # cfg.SEED when set (>= 0), else one random draw shared by all processes; checkpointed.
        self.seed_base = int(seed) if seed is not None and seed >= 0 else comm.shared_random_seed()

    # -- pieces -------------------------------------------------------------------------------------
    def autocast_context(self) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def loss_scale(self) -> float:
        return 1.0

    def step_seed(self) -> int:
        """Seed of this step's model randomness (ROI sampling, dropout): distinct per iteration and rank."""
        return (self.seed_base * 1_000_003 + self.iter * world_size() + comm.get_rank()) % (2**63 - 1)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def build_loss_evaluator(self, source: List[dict], target: Optional[List[dict]]) -> LossEvaluator:
        """This step's LossEvaluator (a subclass may add detection losses: engine/teacher.py)."""
        return LossEvaluator(self.model, source, target, self.autocast_context, self.step_seed())

    def compute_gradients(
        self, source: List[dict], target: Optional[List[dict]]
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Dict[str, torch.Tensor]]:
        """Return (grads: name -> tensor, stats: dict of floats, losses: name -> detached scalar)."""
        opt = self.options
        evaluator = self.build_loss_evaluator(source, target)
        order = _ORDER[opt.mode]
        if target is None and order != "none":
            raise ValueError(f"META.MODE={opt.mode!r} needs a target batch: set DATASETS.TRAIN_TARGET")
        direction = resolve_direction(opt.direction, self.iter)
        compute_cos = order != "none" or (
            opt.joint_grad_cos_period > 0 and target is not None
            and self.iter % opt.joint_grad_cos_period == 0
        )
        distributed = world_size() > 1
        # auto HVP: once double backward has failed for a direction (roi_align), skip the attempt.
        hvp = self._hvp_known.get(direction, opt.hvp) if opt.hvp == "auto" else opt.hvp
        grads, stats = meta_align_grads(
            self.params, evaluator.align_loss, evaluator.det_loss,
            inner_lr=opt.inner_lr_scale * self.current_lr(), order=order, direction=direction,
            hvp=hvp, fd_eps=opt.fd_eps, loss_scale=self.loss_scale(),
            inner_grad_hook=all_reduce_mean_ if distributed and order != "none" else None,
            outer_grad_hook=all_reduce_mean_ if distributed and order == "second" else None,
            compute_cos=compute_cos, fast=self.fast,
        )
        if opt.hvp == "auto" and stats.get("hvp") == "finite_difference":
            self._hvp_known[direction] = "finite_difference"
        stats["direction_is_align_first"] = float(direction == "align_first")
        stats.update(evaluator.metrics)  # "da/*" keys: written under their own names
        return grads, stats, evaluator.logged

    def assign_gradients(self, grads: Dict[str, torch.Tensor], stats: Dict[str, Any]) -> None:
        """One coalesced all-reduce of the final gradients, then ``p.grad`` (scaled for the GradScaler).

        Under several processes ``stats["finite"]`` is re-read from the *reduced* gradients, so that every
        process takes the same decision in :meth:`check_finite` (a lone raise would leave the others
        waiting in the next collective).
        """
        names = list(self.params)
        tensors = [grads[n] for n in names]
        all_reduce_mean_(tensors)
        if world_size() > 1:
            # max-abs norms (one fused kernel on CUDA): finite exactly when every element is -- unlike the
            # 2-norm, it cannot overflow on large finite values -- and NaN/inf propagate
            norms = torch.stack(torch._foreach_norm([t for t in tensors if t.numel()], float("inf")))
            stats["finite"] = bool(torch.isfinite(norms).all())
        scale = self.loss_scale()
        for n, g in zip(names, tensors):
            p = self.params[n]
            g = g.to(p.dtype)
            p.grad = g * scale if scale != 1.0 else g

    def check_finite(self, stats: Dict[str, Any], losses: Dict[str, torch.Tensor]) -> None:
        if not stats.get("finite", True):
            raise FloatingPointError(
                f"non-finite MetaAlign gradient at iteration {self.iter} (META.MODE={self.options.mode}, "
                f"losses={ {k: round(float(v), 4) for k, v in losses.items()} }): training stopped before "
                f"the update; the last checkpoint is intact. Lower SOLVER.BASE_LR or META.INNER_LR_SCALE."
            )

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def weight_norm(self) -> float:
        """2-norm of all trainable weights, accumulated in float64 (no overflow for any finite fp32 weight:
        finite exactly when every weight is finite)."""
        tensors = [p.detach() for p in self.params.values() if p.numel()]
        if not tensors:
            return 0.0
        norms = torch._foreach_norm(tensors, 2, dtype=torch.float64)
        return float(torch.linalg.vector_norm(torch.stack(norms)))

    def check_update(self, norm_before: float, norm_after: float) -> None:
        """Stop (before this iteration's checkpoint hook runs) when the update diverged: non-finite weights,
        or a norm that one step multiplied by more than ``max_weight_norm_growth``."""
        growth = self.max_weight_norm_growth
        if math.isfinite(norm_after) and not (growth and norm_before > 0 and norm_after > growth * norm_before):
            return
        if math.isfinite(norm_after):
            what = (f"one update grew the trainable weights' norm from {norm_before:.4g} to {norm_after:.4g} "
                    f"(more than {growth:g}x)")
        else:
            what = "the update made the weights non-finite"
        raise FloatingPointError(
            f"training diverged at iteration {self.iter}: {what} at lr {self.current_lr():.4g} "
            f"(META.MODE={self.options.mode}); stopped before any checkpoint of these weights was written, the "
            f"last checkpoint is intact. Lower SOLVER.BASE_LR (in the meta modes also META.INNER_LR_SCALE)."
        )

    def write_step_metrics(self, losses: Dict[str, torch.Tensor], stats: Dict[str, Any], data_time: float) -> None:
        """Like SimpleTrainer.write_metrics (one gather), plus the meta/* series."""
        metrics = {k: float(v) for k, v in losses.items()}
        # numbers only (order/direction/hvp are strings), and no NaN: grad_cos is undefined on steps that
        # do not compute it (MODE none between JOINT_GRAD_COS_PERIOD steps).
        meta = {}
        for k, v in stats.items():
            if torch.is_tensor(v):
                v = float(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                meta[k if "/" in k else f"meta/{k}"] = float(v)
        all_metrics = comm.gather((metrics, meta, data_time))
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        storage.put_scalar("data_time", max(x[2] for x in all_metrics))
        loss_means = {k: float(np.mean([x[0][k] for x in all_metrics])) for k in all_metrics[0][0]}
        total = sum(loss_means.values())
        if not np.isfinite(total):
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={storage.iter}! loss_dict = {loss_means}"
            )
        storage.put_scalar("total_loss", total)
        storage.put_scalars(**loss_means)
        meta_keys = set().union(*(x[1].keys() for x in all_metrics))
        meta_means = {}
        for k in meta_keys:
            vals = [x[1][k] for x in all_metrics if k in x[1]]
            meta_means[k] = float(np.mean(vals))
        if meta_means:
            storage.put_scalars(**meta_means, smoothing_hint=False)

    # -- the step -----------------------------------------------------------------------------------
    def run_step(self) -> None:
        assert self.model.training, "[MetaAlignTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        source, target = compat.next_batch(self)
        data_time = time.perf_counter() - start
        grads, stats, losses = self.compute_gradients(source, target)
        stats["inner_lr"] = self.options.inner_lr_scale * self.current_lr()
        self.last_stats = stats
        self.optimizer.zero_grad(set_to_none=True)
        self.assign_gradients(grads, stats)
        self.check_finite(stats, losses)
        self.write_step_metrics(losses, stats, data_time)
        norm_before = self.weight_norm()
        self.optimizer_step()
        # The checkpoint hook saves the weights of this update right after run_step: a diverging update
        # (finite gradients, too large a step) must stop here. Identical on every process (same weights).
        self.check_update(norm_before, self.weight_norm())

    # -- checkpointed state: the step seed and the global RNG streams (restored for one process only), so
    # that kill-and-resume reproduces the uninterrupted run; conditions: docs/training.md ----------------
    def state_dict(self) -> dict:
        ret = super().state_dict()
        ret["step_seed_base"] = self.seed_base
        ret["rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state_to_tensors(np.random.get_state()),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.seed_base = int(state_dict.get("step_seed_base", self.seed_base))
        rng = state_dict.get("rng")
        if rng is not None and world_size() == 1:  # per-process streams differ; restore only when exact
            torch.set_rng_state(rng["torch"])
            np.random.set_state(_numpy_state_from_tensors(rng["numpy"]))
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def _numpy_state_to_tensors(state):
    # torch.load defaults to weights_only=True (torch >= 2.6), which refuses numpy arrays in a checkpoint.
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _numpy_state_from_tensors(state):
    name, keys, pos, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)


_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class MetaAlignAMPTrainer(MetaAlignSimpleTrainer, AMPTrainer):
    """Mixed precision: bf16 autocast (no scaler, CPU or GPU) or fp16 autocast with torch's GradScaler.

    The meta step works on unscaled gradients (it needs them for θ'); the final gradients are handed to the
    GradScaler scaled, so its ``step`` does the usual unscale + inf check + skip, and ``update`` adapts the
    scale.
    """

    def __init__(self, model: torch.nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                 options: Optional[MetaAlignStepOptions] = None, seed: Optional[int] = None, dtype: str = "float16",
                 device_type: Optional[str] = None) -> None:
        if dtype not in _AMP_DTYPES:
            raise ValueError(f"SOLVER.AMP.DTYPE must be 'float16' or 'bfloat16', got {dtype!r}")
        self.amp_dtype = _AMP_DTYPES[dtype]
        self.device_type = device_type or next(model.parameters()).device.type
        if self.device_type != "cuda" and self.amp_dtype == torch.float16:
            raise ValueError("SOLVER.AMP.DTYPE 'float16' needs a CUDA device; use 'bfloat16' on CPU")
        scaler = torch.amp.GradScaler(self.device_type, enabled=self.amp_dtype == torch.float16)
        MetaAlignSimpleTrainer.__init__(self, model, data_loader, optimizer, options, seed)
        self.grad_scaler = scaler

    def autocast_context(self) -> ContextManager[Any]:
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def loss_scale(self) -> float:
        return float(self.grad_scaler.get_scale()) if self.grad_scaler.is_enabled() else 1.0

    def check_finite(self, stats: Dict[str, Any], losses: Dict[str, torch.Tensor]) -> None:
        if not self.grad_scaler.is_enabled():
            super().check_finite(stats, losses)
        # fp16: the GradScaler sees the inf/NaN in step(), skips the update and lowers the scale.

    def optimizer_step(self) -> None:
        if self.grad_scaler.is_enabled():
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    # run_step comes from MetaAlignSimpleTrainer (first in the MRO); state_dict / load_state_dict chain
    # through super(): RNG state (ours), then grad_scaler (AMPTrainer), then optimizer (SimpleTrainer).
