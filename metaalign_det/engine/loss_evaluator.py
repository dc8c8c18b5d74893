"""``LossEvaluator``: the adapter between a detector and the meta step -- it evaluates the model's detection and
alignment losses at given parameter values, as the loss callables :func:`metaalign_det.meta.meta_align_grads`
takes."""
import contextlib
from typing import Callable, ContextManager, Dict, List, Optional

import torch

__all__ = ["LossEvaluator"]


@contextlib.contextmanager
def _seeded(seed: int, devices: List[int]):
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        for d in devices:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        yield


class LossEvaluator:
    """Evaluates the model's detection and alignment losses at parameter values ``p``.

    * ``functional_call`` substitutes ``p`` for the module's trainable parameters (buffers and frozen
      parameters stay the module's own).
    * One forward serves both groups when both are asked for at the same ``p`` (the joint step): the result is
      kept until each group has been read once, then dropped (its graph is freed by the backward).
    * Every evaluation within a step runs under the same RNG seed (``seed``, one per step and process), so
      θ, θ' and θ ± εv see the same ROI sampling and dropout masks -- required for a meaningful
      finite-difference Hessian product. The seed is a function of the iteration, so a resumed run draws
      what the uninterrupted run drew, whatever else (data loader start-up) used the global RNG meanwhile;
      the global RNG stream is left untouched.
    * The detection group alone is evaluated on the source batch only (the target batch has no labels and
      contributes nothing to it).

    Attributes:
        logged: the first value seen of every loss in this step (detached), for metrics.
        metrics: ``da/*`` discriminator accuracies of the first forward with a target batch (detached 0-d
            tensors, see ``DomainAdaptiveRCNN.last_alignment_metrics``); empty without alignment.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        source: List[dict],
        target: Optional[List[dict]],
        autocast_ctx: Callable[[], ContextManager] = contextlib.nullcontext,
        seed: int = 0,
    ) -> None:
        self.model, self.source, self.target = model, source, target
        self.autocast_ctx = autocast_ctx
        self.split = getattr(model, "split_losses", None)
        dev = next(model.parameters()).device
        # the one GPU this process computes on: fork_rng saves / restores only its RNG (not every visible GPU's)
        self._rng_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] \
            if dev.type == "cuda" else []
        self.seed = int(seed)
        self._memo = None
        self.logged: Dict[str, torch.Tensor] = {}
        self.metrics: Dict[str, torch.Tensor] = {}

    def seeded(self, seed: int):
        """A context in which the CPU RNG and this process's GPU RNG start from ``seed``; both are restored
        after it (other GPUs are neither saved nor touched)."""
        return _seeded(seed, self._rng_devices)

    def _forward(self, p, with_target):
        with self.seeded(self.seed):
            with self.autocast_ctx():
                if self.split is None:  # plain GeneralizedRCNN: source-only detection
                    out = torch.func.functional_call(self.model, p, (self.source,))
                    det, align = out, {}
                else:
                    tgt = self.target if with_target else None
                    out = torch.func.functional_call(self.model, p, (self.source, tgt))
                    det, align = self.split(out)
        for k, v in {**det, **align}.items():
            self.logged.setdefault(k, v.detach())
        if with_target:
            # discriminator accuracies of the first forward with a target batch in this step
            for k, v in getattr(self.model, "last_alignment_metrics", {}).items():
                self.metrics.setdefault(f"da/{k}", v)
        return det, align

    def _get(self, p, part):
        memo = self._memo
        if memo is not None and memo["p"] is p and part not in memo["taken"]:
            memo["taken"].add(part)
            return memo[part]
        det, align = self._forward(p, with_target=(part == "align"))
        self._memo = {"p": p, "det": det, "align": align, "taken": {part}}
        return self._memo[part]

    @staticmethod
    def _total(losses, like):
        if not losses:
            return torch.zeros((), device=like.device)
        # half-precision losses (autocast) are summed in fp32; fp32/fp64 ones keep their dtype
        return sum(v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for v in losses.values())

    def align_loss(self, p: Dict[str, torch.Tensor]) -> torch.Tensor:
        ref = next(iter(p.values()))
        return self._total(self._get(p, "align"), ref)

    def det_loss(self, p: Dict[str, torch.Tensor]) -> torch.Tensor:
        ref = next(iter(p.values()))
        return self._total(self._get(p, "det"), ref)
