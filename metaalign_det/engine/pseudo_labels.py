"""Pseudo-labels and their loss: the teacher's detections above a score threshold on the weak target view
(:func:`pseudo_label`), the student's detection losses on them (:class:`PseudoLabelLoss`), and the step's loss
evaluator whose detection group holds them beside the source losses (:class:`PseudoLabelLossEvaluator`)."""
import contextlib
from typing import Callable, Dict, List, Optional, Sequence

import torch
from detectron2.structures import Boxes, Instances

from .loss_evaluator import LossEvaluator

__all__ = ["PSEUDO_LOSS_PREFIX", "pseudo_loss_name", "pseudo_label", "PseudoLabelLoss", "PseudoLabelLossEvaluator"]

# pseudo-label losses: detection group (not "loss_da_"), told apart from the source losses by this prefix
PSEUDO_LOSS_PREFIX = "loss_pseudo_"


def pseudo_loss_name(name: str) -> str:
    """``loss_rpn_cls`` -> ``loss_pseudo_rpn_cls``, ``loss_cls`` -> ``loss_pseudo_cls``."""
    return PSEUDO_LOSS_PREFIX + name[len("loss_"):]


@torch.no_grad()
def pseudo_label(model, inputs: List[dict], score_thresh: float,
                 autocast_ctx: Callable = contextlib.nullcontext) -> List[Instances]:
    """Detections of ``model`` (in eval mode) on ``inputs`` that score >= ``score_thresh``.

    Args:
        model: a GeneralizedRCNN (or subclass) in eval mode; its ``inference`` reads only ``x["image"]``.
        inputs: list of dicts with "image" ((3, H, W), 0-255).
        score_thresh: minimum score in [0, 1].

    Returns:
        one :class:`Instances` per image, of size (H, W) of that image's tensor (the mapped frame, not the
        original file's), on the model's device, with ``gt_boxes`` (Boxes, XYXY pixels, float32),
        ``gt_classes`` (int64, 0-based) and ``scores`` (float32): ready to be ground truth of a training
        forward. Detections went through the ROI heads' test-time score filter, per-class NMS and
        ``TEST.DETECTIONS_PER_IMAGE`` first, as in inference.
    """
    if model.training:
        raise RuntimeError("pseudo_label needs the model in eval mode (the teacher is)")
    with autocast_ctx():
        results = model.inference([{"image": x["image"]} for x in inputs], do_postprocess=False)
    out = []
    for r in results:
        keep = r.scores >= score_thresh
        inst = Instances(r.image_size)
        inst.gt_boxes = Boxes(r.pred_boxes.tensor[keep].float())
        inst.gt_classes = r.pred_classes[keep].long()
        inst.scores = r.scores[keep].float()
        out.append(inst)
    return out


class PseudoLabelLoss:
    """``p -> {loss_pseudo_<name>: weight * loss}``: the student's detection losses on pseudo-labelled images,
    evaluated at parameter values ``p`` through ``torch.func.functional_call``.

    Args:
        model: the student (training mode). Called as ``model(batch)`` -- for DomainAdaptiveRCNN without a
            target batch, i.e. plain GeneralizedRCNN detection losses.
        batch: list of {"image": (3, H, W) tensor, "instances": Instances with gt_boxes / gt_classes}.
        losses: which of detectron2's losses to keep (``TEACHER.LOSSES``); weight: their multiplier.
    """

    def __init__(self, model, batch: List[dict], losses: Sequence[str], weight: float):
        self.model, self.batch, self.losses, self.weight = model, batch, tuple(losses), float(weight)

    def __call__(self, p: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = torch.func.functional_call(self.model, p, (self.batch,))
        missing = [k for k in self.losses if k not in out]
        if missing:
            raise ValueError(f"TEACHER.LOSSES names {missing}, which the model does not return "
                             f"(it returns {sorted(out)})")
        return {pseudo_loss_name(k): self.weight * out[k] for k in self.losses}


class PseudoLabelLossEvaluator(LossEvaluator):
    """:class:`LossEvaluator` whose detection group also holds the pseudo-label losses of this step.

    ``pseudo_loss`` (a :class:`PseudoLabelLoss`, or None) is evaluated at the same ``p`` as the source
    detection losses, under its own fixed per-step seed (derived from ``seed``) and the step's autocast, so
    θ, θ' and θ ± εv see the same ROI sampling on the pseudo-labelled images too. The alignment group is
    unchanged.
    """

    def __init__(self, model, source, target, autocast_ctx=contextlib.nullcontext, seed=0,
                 pseudo_loss: Optional[PseudoLabelLoss] = None):
        super().__init__(model, source, target, autocast_ctx, seed)
        self.pseudo_loss = pseudo_loss
        self._pseudo_seed = (int(seed) * 31 + 17) % (2**63 - 1)

    def _pseudo(self, p):
        with self.seeded(self._pseudo_seed):
            with self.autocast_ctx():
                losses = self.pseudo_loss(p)
        for k, v in losses.items():
            self.logged.setdefault(k, v.detach())
        return losses

    def det_loss(self, p):
        det = self._get(p, "det")
        if self.pseudo_loss is not None:
            det = {**det, **self._pseudo(p)}
        return self._total(det, next(iter(p.values())))
