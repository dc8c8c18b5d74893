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

Host-device synchronisation: on a GPU every read of a device value to Python stalls the host until the
queued kernels have run. A step reads two groups of values: the finite flags of its gradients and
losses (one device-side reduction, before the update) and the weight norms before/after the update (one
read, after it). Losses and statistics stay on the device and are read -- all pending steps in one copy --
only on the steps whose metrics are written (every ``log_period`` iterations and the last one), where they
are put into the EventStorage under their own iteration numbers (engine/step_metrics.py); so the writers see
the same series as if every step had written its own. ``tests/engine/test_host_syncs.py`` pins these counts.
The global random streams go into checkpoints through engine/rng_state.py.
"""
import contextlib
import logging
import math
import time
from typing import Any, ContextManager, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm

from .. import compat
from ..data.paired_loader import batch_to_device
from ..meta import meta_align_grads, resolve_direction, select_params
from ..meta.buffers import StepBuffers
from ..meta.grad_stats import finite_flag
from ..options import MetaOptions
from .distributed import all_reduce_mean_, world_size
from .loss_evaluator import LossEvaluator
from .rng_state import capture_rng_state, restore_rng_state
from .step_metrics import DeferredStepMetrics

__all__ = ["MetaAlignStepOptions", "MetaAlignSimpleTrainer", "MetaAlignAMPTrainer"]

logger = logging.getLogger(__name__)

# The META.* settings the step needs, validated once (one clear error per bad key): metaalign_det/options.py.
MetaAlignStepOptions = MetaOptions


class MetaAlignSimpleTrainer(SimpleTrainer):
    """SimpleTrainer over a paired loader whose gradient is the MetaAlign meta-gradient (or the joint one).

    Attributes:
        max_weight_norm_growth: an update that makes the 2-norm of the trainable weights more than this many
            times larger is divergence (healthy SGD steps change it by well under 1%); ``None`` disables the
            growth test (non-finite weights still stop training).
        log_period: metrics are read from the device and put into the EventStorage on iterations where
            ``(iter + 1) % log_period == 0`` and at ``max_iter - 1`` -- when detectron2's PeriodicWriter
            writes (``build_step_trainer`` sets both from SOLVER.LOG_PERIOD / MAX_ITER). Default 1: every
            step. :meth:`flush_metrics` writes the pending ones at any time.
        max_iter: see ``log_period`` (None: unknown).
    """

    max_weight_norm_growth: Optional[float] = 10.0
    log_period: int = 1
    max_iter: Optional[int] = None

    def __init__(self, model: torch.nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                 options: Optional[MetaAlignStepOptions] = None, seed: Optional[int] = None,
                 **base_kwargs: Any) -> None:
        # base_kwargs reach the next class of the MRO: SimpleTrainer (none), or AMPTrainer (grad_scaler=...),
        # whose real constructor runs; (model, data_loader, optimizer, grad_scaler=) is its API in v0.6 and later.
        super().__init__(model, data_loader, optimizer, **base_kwargs)
        self.options = options or MetaAlignStepOptions()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        # Every trainable parameter gets a gradient; META.PARAMS only restricts which ones take the inner
        # (fast-weight) step -- the rest keep θ in θ'.
        self.params = dict(named)
        self.device = next(model.parameters()).device  # where batches are moved, once per step
        self.fast = set(select_params(named, self.options.params)) if self.options.params else None
        # the last step's stats; numeric values are 0-d device tensors (meta.grad_stats.materialize_stats)
        self.last_stats: Dict[str, Any] = {}
        self._hvp_known: Dict[str, str] = {}
        # (iteration, losses, stats, data_time) of the steps not yet written
        self.metrics = DeferredStepMetrics()  # losses / stats on the device until a log step
        # theta' (and theta +- eps v) reuse these tensors step after step instead of fresh ones
        self._step_buffers = StepBuffers()
        # cfg.SEED when set (>= 0), else one random draw shared by all processes; checkpointed.
        self.seed_base = int(seed) if seed is not None and seed >= 0 else comm.shared_random_seed()

    # -- pieces -------------------------------------------------------------------------------------
    def autocast_context(self) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def loss_scale(self) -> Union[float, torch.Tensor]:
        """What each loss is multiplied by before a backward: 1.0, or (fp16) the GradScaler's scale."""
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
        self, source: List[dict], target: Optional[List[dict]], evaluator: Optional[LossEvaluator] = None
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Dict[str, torch.Tensor]]:
        """Return (grads: name -> tensor, stats: name -> 0-d device tensor, float or string (read on log steps
        only, :meth:`flush_metrics`), losses: name -> detached 0-d tensor). ``evaluator``: the step's losses
        (default :meth:`build_loss_evaluator`; the teacher step passes one that also holds its pseudo-label
        losses)."""
        opt = self.options
        if evaluator is None:
            evaluator = self.build_loss_evaluator(source, target)
        order = opt.order
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
            compute_cos=compute_cos, fast=self.fast, lazy_stats=True, buffers=self._step_buffers,
        )
        if opt.hvp == "auto" and stats.get("hvp") == "finite_difference":
            self._hvp_known[direction] = "finite_difference"
        stats["direction_is_align_first"] = float(direction == "align_first")
        stats.update(evaluator.metrics)  # "da/*" keys: written under their own names
        losses = evaluator.logged
        # folded into check_finite's single read; with several processes, all-reduced in assign_gradients
        stats["losses_finite"] = finite_flag(list(losses.values())) if losses else True
        return grads, stats, losses

    def assign_gradients(self, grads: Dict[str, torch.Tensor], stats: Dict[str, Any]) -> None:
        """One coalesced all-reduce of the final gradients, then ``p.grad`` (scaled for the GradScaler).

        Under several processes ``stats["finite"]`` is re-computed from the *reduced* gradients and
        ``stats["losses_finite"]`` is reduced with them (one more element in the same all-reduce), so that
        every process takes the same decision in :meth:`check_finite` (a lone raise would leave the others
        waiting in the next collective). Both stay on the device.
        """
        names = list(self.params)
        tensors = [grads[n] for n in names]
        if world_size() > 1:
            ok = stats.get("losses_finite", True)
            ok = ok if torch.is_tensor(ok) else torch.tensor(bool(ok), device=tensors[0].device)
            bad = (~ok).to(device=tensors[0].device, dtype=torch.float32).reshape(1)
            all_reduce_mean_(tensors + [bad])
            # max-abs norms (one fused kernel on CUDA): finite exactly when every element is -- unlike the
            # 2-norm, it cannot overflow on large finite values -- and NaN/inf propagate
            norms = torch.stack(torch._foreach_norm([t for t in tensors if t.numel()], float("inf")))
            stats["finite"] = torch.isfinite(norms).all()
            stats["losses_finite"] = bad[0] == 0  # no process had a non-finite loss
        scale = self.loss_scale()
        unit = not torch.is_tensor(scale) and scale == 1.0
        for n, g in zip(names, tensors):
            p = self.params[n]
            g = g.to(p.dtype)
            p.grad = g if unit else g * scale

    def check_finite(self, stats: Dict[str, Any], losses: Dict[str, torch.Tensor],
                     check_grads: bool = True) -> None:
        """Stop before the update when the gradients (``stats["finite"]``) or the losses
        (``stats["losses_finite"]``) are non-finite: both flags are read in ONE device->host copy."""
        grads_ok, losses_ok = _read_flags([stats.get("finite", True) if check_grads else True,
                                           stats.get("losses_finite", True)])
        if not grads_ok:
            raise FloatingPointError(
                f"non-finite MetaAlign gradient at iteration {self.iter} (META.MODE={self.options.mode}, "
                f"losses={ {k: round(float(v), 4) for k, v in losses.items()} }): training stopped before "
                f"the update; the last checkpoint is intact. Lower SOLVER.BASE_LR or META.INNER_LR_SCALE."
            )
        if not losses_ok:
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration {self.iter} (META.MODE={self.options.mode}, "
                f"losses={ {k: round(float(v), 4) for k, v in losses.items()} }): training stopped before "
                f"the update; the last checkpoint is intact. Lower SOLVER.BASE_LR or META.INNER_LR_SCALE."
            )

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def weight_norm(self) -> float:
        """2-norm of all trainable weights, accumulated in float64 (no overflow for any finite fp32 weight:
        finite exactly when every weight is finite). Reads one value to the host."""
        return float(self.weight_norm_tensor())

    def weight_norm_tensor(self) -> torch.Tensor:
        """:meth:`weight_norm` as a 0-d float64 tensor on the weights' device (no host sync).

        Remembered with the weights' autograd version counters and storages: the norm before a step's update
        is the one computed after the previous update unless a weight was changed in place (loading a
        checkpoint, a hook) or replaced since -- one full pass over the weights per step instead of two (on
        CPU the float64 norm converts every weight tensor). A change through ``p.data`` is not versioned and
        would go unseen; nothing in training does that between steps.
        """
        tensors = [p.detach() for p in self.params.values() if p.numel()]
        if not tensors:
            return torch.zeros((), dtype=torch.float64)
        key = tuple((p._version, p.data_ptr()) for p in self.params.values())
        cached = getattr(self, "_weight_norm_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        norms = torch._foreach_norm(tensors, 2, dtype=torch.float64)
        norm = torch.linalg.vector_norm(torch.stack(norms))
        self._weight_norm_cache = (key, norm)
        return norm

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
        """Like SimpleTrainer.write_metrics plus the meta/* series, deferred: the values stay on the device
        until a log step (see ``log_period``), which reads every pending step in one copy."""
        self.metrics.add(self.iter, losses, stats, data_time)
        last = self.max_iter is not None and self.iter >= self.max_iter - 1
        if self.log_period <= 1 or (self.iter + 1) % self.log_period == 0 or last:
            self.flush_metrics()

    def flush_metrics(self, collective: bool = True) -> None:
        """Write the pending steps' metrics now (:meth:`DeferredStepMetrics.flush`)."""
        self.metrics.flush(collective)

    # -- the step -----------------------------------------------------------------------------------
    def run_step(self) -> None:
        assert self.model.training, "[MetaAlignTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        source, target = compat.next_batch(self)
        # once per step, non-blocking from the loader's pinned memory (CUDA), instead of a blocking copy in
        # every forward pass of the step; a no-op on CPU
        source, target = batch_to_device(source, self.device), batch_to_device(target, self.device)
        data_time = time.perf_counter() - start
        grads, stats, losses = self.compute_gradients(source, target)
        stats["inner_lr"] = self.options.inner_lr_scale * self.current_lr()
        self.last_stats = stats
        self.optimizer.zero_grad(set_to_none=True)
        self.assign_gradients(grads, stats)
        self.check_finite(stats, losses)  # host sync 1: one flag pair
        self.write_step_metrics(losses, stats, data_time)  # no sync except on log steps
        norm_before = self.weight_norm_tensor()
        self.optimizer_step()
        # The checkpoint hook saves the weights of this update right after run_step: a diverging update
        # (finite gradients, too large a step) must stop here. Identical on every process (same weights).
        before, after = torch.stack([norm_before, self.weight_norm_tensor()]).tolist()  # host sync 2
        self.check_update(before, after)

    # -- checkpointed state: the step seed and the global RNG streams (restored for one process only), so
    # that kill-and-resume reproduces the uninterrupted run; conditions: docs/training.md ----------------
    def state_dict(self) -> dict:
        ret = super().state_dict()
        ret["step_seed_base"] = self.seed_base
        ret["rng"] = capture_rng_state()
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.seed_base = int(state_dict.get("step_seed_base", self.seed_base))
        rng = state_dict.get("rng")
        if rng is not None and world_size() == 1:  # per-process streams differ; restore only when exact
            restore_rng_state(rng)


def _read_flags(flags: Sequence[Union[bool, torch.Tensor]]) -> List[bool]:
    """Python bools of ``flags`` (bools or 0-d bool tensors): the tensors in one device->host copy."""
    tensors = [f for f in flags if torch.is_tensor(f)]
    if not tensors:
        return [bool(f) for f in flags]
    dev = tensors[0].device
    read = iter(torch.stack([t.reshape(()).to(device=dev, dtype=torch.bool) for t in tensors]).tolist())
    return [bool(next(read)) if torch.is_tensor(f) else bool(f) for f in flags]


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
        # torch.amp's scaler for this device (AMPTrainer would default to the CUDA-only torch.cuda.amp one)
        scaler = torch.amp.GradScaler(self.device_type, enabled=self.amp_dtype == torch.float16)
        super().__init__(model, data_loader, optimizer, options, seed, grad_scaler=scaler)

    def autocast_context(self) -> ContextManager[Any]:
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def loss_scale(self) -> Union[float, torch.Tensor]:
        # fp16: the scaler's current scale as a 0-d tensor on the device, via its public scale() -- get_scale()
        # would read it to the host (a device sync) twice per step
        if not self.grad_scaler.is_enabled():
            return 1.0
        return self.grad_scaler.scale(torch.ones((), dtype=torch.float32, device=self.device))

    def check_finite(self, stats: Dict[str, Any], losses: Dict[str, torch.Tensor],
                     check_grads: bool = True) -> None:
        # fp16: the GradScaler sees inf/NaN gradients in step(), skips the update and lowers the scale;
        # non-finite losses still stop training.
        super().check_finite(stats, losses, check_grads=check_grads and not self.grad_scaler.is_enabled())

    def optimizer_step(self) -> None:
        if self.grad_scaler.is_enabled():
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    # run_step comes from MetaAlignSimpleTrainer (first in the MRO); state_dict / load_state_dict chain
    # through super(): RNG state (ours), then grad_scaler (AMPTrainer), then optimizer (SimpleTrainer).
