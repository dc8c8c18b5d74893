"""Exponential moving average (EMA) of a model's weights: the evaluated model when MODEL.EMA.ENABLED, and the
mean teacher when TEACHER.ENABLED (docs/teacher.md).

Update, after every optimizer step, for every floating-point parameter *and* buffer ``w`` (state-dict
order)::

    ema_w <- decay * ema_w + (1 - decay) * w

Non-floating buffers (counters such as BatchNorm's ``num_batches_tracked``) are copied. With ``decay`` 0 the
EMA is a copy of the model (the teacher's initialisation at the end of burn-in).

The EMA is a separate module (a deep copy), always in eval mode, without gradients (``requires_grad`` off
everywhere). Its state is checkpointed as the ``"ema"`` entry of a checkpoint (``state_dict``: the EMA
model's state dict, the decay and the number of updates), so a resumed run continues the same average.
Every process applies the same update to the same (broadcast, all-reduced) student, so the EMA is identical
on every process without any communication.
"""
import copy
from typing import Dict

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """EMA copy of ``model``.

    Attributes:
        model: the averaged module (eval mode, no gradients); evaluate or run inference with it.
        decay: the default decay of :meth:`update`.
        updates: number of :meth:`update` calls since construction or the last :meth:`copy_from`.
        restored: True once :meth:`load_state_dict` has filled it from a checkpoint (the trainer then
            keeps it; otherwise it re-copies the model after loading MODEL.WEIGHTS).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = self._check_decay(decay)
        self.model = copy.deepcopy(model)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.updates = 0
        self.restored = False

    @staticmethod
    def _check_decay(decay) -> float:
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MODEL.EMA.DECAY must be in [0, 1), got {decay}")
        return decay

    def _pairs(self, model: nn.Module):
        mine, theirs = self.model.state_dict(), model.state_dict()
        if mine.keys() != theirs.keys():
            missing = sorted(set(mine) ^ set(theirs))[:5]
            raise ValueError(f"ModelEMA: the model's state-dict keys differ from the EMA's (e.g. {missing})")
        return [(mine[k], theirs[k]) for k in mine]

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float = None) -> None:
        """ema = decay * ema + (1 - decay) * model, in place (floating tensors; others copied)."""
        d = self.decay if decay is None else self._check_decay(decay)
        floats_e, floats_m = [], []
        for e, m in self._pairs(model):
            if e.is_floating_point():
                floats_e.append(e)
                floats_m.append(m.detach().to(e.dtype))
            else:
                e.copy_(m)
        if floats_e:
            # lerp: e + (1 - d) (m - e) = d e + (1 - d) m; one fused kernel per dtype/device group
            torch._foreach_lerp_(floats_e, floats_m, 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Make the EMA an exact copy of ``model`` (and restart the update count)."""
        for e, m in self._pairs(model):
            e.copy_(m)
        self.updates = 0

    # -- checkpointing (a detectron2 Checkpointer "checkpointable") -----------------------------------
    def state_dict(self) -> Dict:
        return {"model": self.model.state_dict(), "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: Dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state.get("updates", 0))
        self.restored = True
