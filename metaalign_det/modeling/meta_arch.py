"""``DomainAdaptiveRCNN``: detectron2's GeneralizedRCNN plus DA-Faster R-CNN's domain discriminators.

Training with a target batch returns ONE dict of scalar losses::

    loss_rpn_cls, loss_rpn_loc, loss_cls, loss_box_reg   detection, source batch only (detectron2's names)
    loss_da_img    IMG_LOSS_WEIGHT * 1/2 (L_img(source, 0) + L_img(target, 1))    if IMG_ENABLED
    loss_da_ins    INS_LOSS_WEIGHT * 1/2 (L_ins(source ROIs, 0) + L_ins(target proposals, 1))  if INS_ENABLED
    loss_da_cst    CST_WEIGHT      * 1/2 (L_cst(source) + L_cst(target))           if CST_WEIGHT > 0
    loss_da_local  SWDA.LOCAL_LOSS_WEIGHT  * 1/2 (mean(D_s^2) + mean((1 - D_t)^2))    if SWDA.LOCAL_ENABLED
    loss_da_global SWDA.GLOBAL_LOSS_WEIGHT * 1/2 (FL_5(source, 0) + FL_5(target, 1))  if SWDA.GLOBAL_ENABLED

(source = 0, target = 1). Averaging the two domains with equal weight keeps a batch-size difference
between source and target from tilting the discriminator; with equal batches it equals DA-Faster's
mean over the concatenated batch (per-level means, then the mean over levels).

How the features are obtained without copying detectron2's forward:

* source: ``GeneralizedRCNN.forward`` itself computes the detection losses; hooks registered once at
  construction record, for that one call only, the backbone's output dict (image level), the input of
  ``roi_heads.box_predictor`` (box-head feature of every sampled ROI: (R, D)) and the box lists given to
  the ROI pooler (ROIs per image, for the consistency loss). The record is cleared when the call ends.
* target: ``preprocess_image`` -> ``backbone`` (once) -> the proposal generator with its ``training``
  flag off (inference path: proposals without ground truth or losses) -> the top
  ``INS_TARGET_PROPOSALS`` per image by objectness -> the ROI pooler and box head (StandardROIHeads) or
  pooler, res5 and spatial mean (Res5ROIHeads): the same features the box predictor sees.
  Target annotations are never read.

SWDA's context vectors (``MODEL.SWDA.LOCAL_CONTEXT`` / ``GLOBAL_CONTEXT``): a forward hook on the backbone
adds, to the backbone's output dict of every source / inference pass, the per-image context
``cat([global context, local context])`` (N, 128 per context; the discriminators on detached features) under
``SWDA_CONTEXT_KEY``; the context ROI heads (:mod:`.context_roi_heads`) append it to each ROI's box feature.
The target pass of the alignment losses skips it (nothing there reads it).

Nothing is cached across calls and no parameter is touched in place, so the model composes with
``torch.func.functional_call`` (the MetaAlign step evaluates it at substituted parameters).
"""
import contextlib
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads
from detectron2.structures import Boxes
from torch import nn

from .context_roi_heads import SWDA_CONTEXT_KEY
from .discriminators import build_img_da_head, build_ins_da_head, select_feature_shapes
from .losses import (
    SOURCE_LABEL,
    TARGET_LABEL,
    consistency_loss,
    domain_bce,
    domain_focal,
    domain_least_squares,
    domain_softmax_focal,
)
from .swda_heads import build_swda_global_head, build_swda_local_head

__all__ = [
    "DomainAdaptiveRCNN",
    "ALIGN_LOSS_KEYS",
    "ALIGN_LOSS_PREFIX",
    "DA_HEAD_ATTRS",
    "SWDA_LOSS_KEYS",
    "split_losses",
    "strip_da_heads",
    "roi_box_feature_dim",
    "roi_box_features",
]

ALIGN_LOSS_KEYS = ("loss_da_img", "loss_da_ins", "loss_da_cst")
# SWDA's alignment losses (MODEL.SWDA.*): in the same "loss_da_" group
SWDA_LOSS_KEYS = ("loss_da_local", "loss_da_global")
# every alignment loss (builtin or added by a subclass) starts with this; everything else is detection
ALIGN_LOSS_PREFIX = "loss_da_"
# attribute names of the discriminator heads: their state-dict keys start with "<attr>."
DA_HEAD_ATTRS = ("da_img_head", "da_ins_head", "da_local_head", "da_global_head")


def split_losses(loss_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Partition a loss dict into ``(detection_losses, alignment_losses)``.

    Alignment losses are the keys starting with ``"loss_da_"`` (:data:`ALIGN_LOSS_KEYS`,
    :data:`SWDA_LOSS_KEYS`); every other key is a detection loss. Values are passed through untouched (no
    copies, graphs kept).
    """
    det, align = {}, {}
    for k, v in loss_dict.items():
        (align if k.startswith(ALIGN_LOSS_PREFIX) else det)[k] = v
    return det, align


def strip_da_heads(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """A copy of ``state_dict`` without the discriminator heads, for deployment.

    The result loads with ``strict=True`` into a plain ``GeneralizedRCNN`` built from the same config with
    the DA heads off; it gives the same detections (the heads are not used at inference -- except with SWDA's
    context vectors on: then the SWDA heads are part of the detector, so do not strip that model). Keys may carry
    DDP's ``module.`` prefix. A detectron2 checkpoint is ``{"model": state_dict, ...}``: pass
    ``ckpt["model"]``.
    """
    out = OrderedDict()
    for k, v in state_dict.items():
        parts = k.split(".")
        first = parts[1] if parts[0] == "module" and len(parts) > 1 else parts[0]
        if first not in DA_HEAD_ATTRS:
            out[k] = v
    return out


def _roi_heads_kind(roi_heads: nn.Module) -> str:
    """"standard" or "res5", or a clear error: the instance-level head needs one known box pathway."""
    predictor = getattr(roi_heads, "box_predictor", None)
    single_predictor = isinstance(predictor, nn.Module) and not isinstance(predictor, (nn.ModuleList, nn.ModuleDict))
    if single_predictor and isinstance(roi_heads, StandardROIHeads) and isinstance(
        getattr(roi_heads, "box_pooler", None), nn.Module
    ):
        return "standard"
    if single_predictor and isinstance(roi_heads, Res5ROIHeads):
        return "res5"
    raise TypeError(
        "MODEL.DA_HEADS.INS_ENABLED needs ROI heads whose box features it can read: StandardROIHeads or "
        "Res5ROIHeads (or a subclass) with one box_predictor; got "
        f"{type(roi_heads).__name__} (MODEL.ROI_HEADS.NAME). Turn INS_ENABLED off or use one of those."
    )


def roi_box_feature_dim(roi_heads: nn.Module) -> int:
    """D of the per-ROI box feature that ``roi_heads.box_predictor`` receives (the instance head's input)."""
    kind = _roi_heads_kind(roi_heads)
    cls_score = getattr(roi_heads.box_predictor, "cls_score", None)
    if isinstance(cls_score, nn.Linear):  # FastRCNNOutputLayers and look-alikes
        # context ROI heads widen the predictor's input by the SWDA context; the box feature is the rest
        feeder = getattr(roi_heads, "context_feeder", None)
        return cls_score.in_features - (feeder.context_dim if feeder is not None else 0)
    if kind == "standard":
        shape = roi_heads.box_head.output_shape
        return shape.channels * (shape.height or 1) * (shape.width or 1)
    return roi_heads.res5[-1].out_channels


def roi_box_features(roi_heads: nn.Module, features: Dict[str, torch.Tensor], boxes: List[Boxes],
                     kind: Optional[str] = None) -> torch.Tensor:
    """(R, D) box features of ``boxes`` (R boxes over all images) through the ROI heads' own pooler and box
    head: exactly what ``roi_heads.box_predictor`` sees for them. ``features``: the backbone's output dict;
    ``boxes``: one :class:`Boxes` per image (absolute XYXY in input pixels). Works for StandardROIHeads and
    Res5ROIHeads (and subclasses); anything else is a TypeError naming the class."""
    kind = kind or _roi_heads_kind(roi_heads)
    if kind == "standard":
        x = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], boxes)
        x = roi_heads.box_head(x)
    else:  # "res5": Res5ROIHeads averages the res5 output over space before its box predictor
        x = roi_heads.res5(roi_heads.pooler([features[f] for f in roi_heads.in_features], boxes)).mean(dim=[2, 3])
    return x.flatten(1)


class _ForwardRecorder:
    """Capture buffer for the source pass, fed by hooks registered once at model construction.

    It records only inside :meth:`recording` (one ``GeneralizedRCNN.forward`` call) and only the first
    call of each hooked module there; outside it the hooks do nothing, so inference and the target
    pass are unaffected. Hooks are bound methods of this object, so ``copy.deepcopy(model)`` rebinds them
    to the copy's recorder. Every hook returns None, so it never replaces a module's inputs or outputs.
    """

    def __init__(self):
        self._record: Optional[dict] = None

    @contextlib.contextmanager
    def recording(self):
        if self._record is not None:
            raise RuntimeError("DomainAdaptiveRCNN: nested training forward on the same model")
        self._record = {}
        try:
            yield self._record
        finally:
            self._record = None  # no state kept across forwards, also after an exception

    def backbone_output(self, module, inputs, output):
        if self._record is not None:
            self._record.setdefault("features", output)

    def pooler_input(self, module, args, kwargs):
        if self._record is not None and "roi_counts" not in self._record:
            box_lists = args[1] if len(args) > 1 else kwargs["box_lists"]
            self._record["roi_counts"] = [len(b) for b in box_lists]

    def box_predictor_input(self, module, args, kwargs):
        if self._record is not None and "roi_features" not in self._record:
            x = args[0] if args else next(iter(kwargs.values()))
            self._record["roi_features"] = x.flatten(1)


@contextlib.contextmanager
def _inference_mode_flag(module: nn.Module):
    """Set only ``module.training`` to False (children untouched), restoring it afterwards.

    detectron2's RPN branches on its own ``training`` flag (losses, pre/post-NMS top-k); its children
    have no train/eval-dependent layers, and leaving them alone keeps any BN/dropout behaviour as is.
    """
    was = module.training
    module.training = False
    try:
        yield
    finally:
        module.training = was


def _domain_accuracy(logits: List[torch.Tensor], domain: int) -> torch.Tensor:
    """Fraction of elements a discriminator classifies as ``domain`` (logit < 0 = source, > 0 = target).

    ``logits``: a list of tensors of any shape (one per feature level); the fraction is computed per level
    and averaged over the levels, as the image-level loss is. Returns a detached 0-d float32 tensor on the
    logits' device (no host sync); NaN when there is no element at all.
    """
    with torch.no_grad():
        per_level = []
        for z in logits:
            if z.numel() == 0:
                continue
            correct = z > 0 if domain == TARGET_LABEL else z < 0
            per_level.append(correct.float().mean())
        if not per_level:
            return torch.full((), float("nan"), device=logits[0].device if logits else None)
        return torch.stack(per_level).mean()


@META_ARCH_REGISTRY.register()
class DomainAdaptiveRCNN(GeneralizedRCNN):
    """GeneralizedRCNN + image-level / instance-level domain discriminators (+ consistency).

    ``forward(batched_inputs, target_inputs=None)``:

    * eval mode: exactly :meth:`GeneralizedRCNN.forward` (inference on ``batched_inputs``;
      ``target_inputs`` ignored).
    * training, ``target_inputs is None`` or no alignment enabled: exactly GeneralizedRCNN's detection
      losses on ``batched_inputs`` (the MetaAlign step's det-only evaluation at theta').
    * training with ``target_inputs`` (a list of dicts with "image", of any length and image sizes):
      detection losses on the source plus the enabled ``loss_da_*`` (see the module docstring), each
      already multiplied by its weight.

    Every trainable parameter gets a gradient from the sum of that dict (DDP needs it): the backbone and
    detector from the source detection losses, each head from its own loss (empty inputs give a zero
    loss that stays in the graph).

    Diagnostics: every training forward with a target batch also sets ``last_alignment_metrics``, a dict
    of detached 0-d tensors (no host sync) -- ``img_acc_source``, ``img_acc_target`` (fraction of image-level
    locations the discriminator assigns to the right domain, averaged over levels) and ``ins_acc_source``,
    ``ins_acc_target`` (the same over ROIs), for the enabled heads. 0.5 means the discriminator cannot tell
    the domains apart; 1.0 on both sides means it wins outright. They are not losses and are kept out of
    the loss dict so that ``sum(loss_dict.values())`` stays the training loss. The trainer logs them as
    ``da/*``.
    """

    @configurable
    def __init__(
        self,
        *,
        img_da_head: Optional[nn.Module] = None,
        img_in_features: Sequence[str] = ("res4",),
        img_loss: str = "bce",
        img_focal_gamma: float = 5.0,
        img_loss_weight: float = 1.0,
        ins_da_head: Optional[nn.Module] = None,
        ins_loss_weight: float = 1.0,
        ins_target_proposals: int = 128,
        cst_weight: float = 0.0,
        local_da_head: Optional[nn.Module] = None,
        local_in_feature: str = "res2",
        local_loss_weight: float = 1.0,
        local_context: bool = False,
        global_da_head: Optional[nn.Module] = None,
        global_in_feature: str = "res4",
        global_loss_weight: float = 1.0,
        global_focal_gamma: float = 5.0,
        global_context: bool = False,
        **kwargs,
    ):
        """
        Args:
            img_da_head: image-level discriminator (None = off); called on the list of
                ``img_in_features`` maps, returns a list of (N, 1, H, W) logits.
            img_in_features: backbone outputs it reads (validated against the backbone).
            img_loss: "bce" or "focal"; img_focal_gamma: the focal exponent.
            img_loss_weight, ins_loss_weight, cst_weight: multipliers of loss_da_img / _ins / _cst
                (``cst_weight`` 0 = no consistency loss; > 0 needs both heads).
            ins_da_head: instance-level discriminator (None = off); (R, D) -> (R, 1).
            ins_target_proposals: top-N RPN proposals per target image fed to it.
            local_da_head / global_da_head: SWDA's local (strong) / global (weak) discriminator (None = off),
                reading the backbone outputs ``local_in_feature`` / ``global_in_feature``; their losses are
                weighted by ``local_loss_weight`` / ``global_loss_weight``; ``global_focal_gamma``: the focal
                exponent. ``local_context`` / ``global_context``: feed that head's context vector to the
                box predictor (needs that head and context ROI heads).
            kwargs: GeneralizedRCNN's arguments (backbone, proposal_generator, roi_heads, pixel_mean, ...).
        """
        super().__init__(**kwargs)
        if img_loss not in ("bce", "focal"):
            raise ValueError(f"MODEL.DA_HEADS.IMG_LOSS must be 'bce' or 'focal', got {img_loss!r}")
        if cst_weight < 0 or (cst_weight > 0 and (img_da_head is None or ins_da_head is None)):
            raise ValueError(
                f"MODEL.DA_HEADS.CST_WEIGHT = {cst_weight}: the consistency loss compares the image-level and "
                "instance-level heads, so a positive weight needs IMG_ENABLED and INS_ENABLED (0 = off)"
            )
        if ins_da_head is not None and ins_target_proposals < 1:
            raise ValueError(f"MODEL.DA_HEADS.INS_TARGET_PROPOSALS must be >= 1, got {ins_target_proposals}")
        self.img_in_features = list(img_in_features)
        if img_da_head is not None:
            select_feature_shapes(self.img_in_features, self.backbone.output_shape())
        self._roi_kind = None
        if ins_da_head is not None:
            self._roi_kind = _roi_heads_kind(self.roi_heads)
            if self.proposal_generator is None:
                raise ValueError(
                    "MODEL.DA_HEADS.INS_ENABLED needs a proposal generator (RPN) to propose target ROIs"
                )
        self.da_img_head = img_da_head
        self.da_ins_head = ins_da_head
        self._init_swda(local_da_head, local_in_feature, local_loss_weight, local_context,
                        global_da_head, global_in_feature, global_loss_weight, global_focal_gamma, global_context)
        self.img_loss = img_loss
        self.img_focal_gamma = float(img_focal_gamma)
        self.img_loss_weight = float(img_loss_weight)
        self.ins_loss_weight = float(ins_loss_weight)
        self.ins_target_proposals = int(ins_target_proposals)
        self.cst_weight = float(cst_weight)
        self.last_alignment_metrics: Dict[str, torch.Tensor] = {}

        # hooks are registered once here (not per forward) so they compose with functional_call,
        # deepcopy and DDP; they record only inside _ForwardRecorder.recording()
        self._recorder = _ForwardRecorder()
        if img_da_head is not None or self.da_local_head is not None or self.da_global_head is not None:
            self.backbone.register_forward_hook(self._recorder.backbone_output)
        if ins_da_head is not None:
            pooler = self.roi_heads.box_pooler if self._roi_kind == "standard" else self.roi_heads.pooler
            pooler.register_forward_pre_hook(self._recorder.pooler_input, with_kwargs=True)
            # prepend: record the box feature before a context ROI head appends the SWDA context to it
            self.roi_heads.box_predictor.register_forward_pre_hook(
                self._recorder.box_predictor_input, with_kwargs=True, prepend=True
            )
        self._context_enabled = True  # switched off only around the target pass (nothing reads it there)
        if self.local_context or self.global_context:
            self.backbone.register_forward_hook(self._add_swda_context)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        da = cfg.MODEL.DA_HEADS
        if da.IMG_ENABLED:
            # validate the names first: one clear error instead of a KeyError deep inside a head
            shapes = ret["backbone"].output_shape()
            select_feature_shapes(da.IMG_IN_FEATURES, shapes)
            ret["img_da_head"] = build_img_da_head(cfg, shapes)
        if da.INS_ENABLED:
            ret["ins_da_head"] = build_ins_da_head(cfg, roi_box_feature_dim(ret["roi_heads"]))
        sw = cfg.MODEL.SWDA
        if sw.LOCAL_ENABLED:
            ret["local_da_head"] = build_swda_local_head(cfg, ret["backbone"].output_shape())
        if sw.GLOBAL_ENABLED:
            ret["global_da_head"] = build_swda_global_head(cfg, ret["backbone"].output_shape())
        ret.update(
            local_in_feature=sw.LOCAL_IN_FEATURE,
            local_loss_weight=sw.LOCAL_LOSS_WEIGHT,
            local_context=sw.LOCAL_CONTEXT,
            global_in_feature=sw.GLOBAL_IN_FEATURE,
            global_loss_weight=sw.GLOBAL_LOSS_WEIGHT,
            global_focal_gamma=sw.GLOBAL_FOCAL_GAMMA,
            global_context=sw.GLOBAL_CONTEXT,
        )
        ret.update(
            img_in_features=list(da.IMG_IN_FEATURES),
            img_loss=da.IMG_LOSS,
            img_focal_gamma=da.IMG_FOCAL_GAMMA,
            img_loss_weight=da.IMG_LOSS_WEIGHT,
            ins_loss_weight=da.INS_LOSS_WEIGHT,
            ins_target_proposals=da.INS_TARGET_PROPOSALS,
            cst_weight=da.CST_WEIGHT,
        )
        return ret

    # ---- public helpers -----------------------------------------------------------------------------
    ALIGN_LOSS_KEYS = ALIGN_LOSS_KEYS
    split_losses = staticmethod(split_losses)
    strip_da_heads = staticmethod(strip_da_heads)

    @property
    def alignment_enabled(self) -> bool:
        """True when at least one discriminator head exists (a target batch then adds loss_da_*)."""
        return any(h is not None for h in (self.da_img_head, self.da_ins_head, self.da_local_head,
                                           self.da_global_head))

    # ---- SWDA -----------------------------------------------------------------------------------------
    def _init_swda(self, local_head, local_in, local_weight, local_context,
                   global_head, global_in, global_weight, global_gamma, global_context) -> None:
        shapes = self.backbone.output_shape()
        if local_head is not None:
            select_feature_shapes([local_in], shapes, key="MODEL.SWDA.LOCAL_IN_FEATURE")
        if global_head is not None:
            select_feature_shapes([global_in], shapes, key="MODEL.SWDA.GLOBAL_IN_FEATURE")
        for on, head, key in ((local_context, local_head, "LOCAL"), (global_context, global_head, "GLOBAL")):
            if on and head is None:
                raise ValueError(f"MODEL.SWDA.{key}_CONTEXT needs MODEL.SWDA.{key}_ENABLED: the context vector "
                                 "comes from that discriminator")
        self.da_local_head = local_head
        self.da_global_head = global_head
        self.local_in_feature, self.global_in_feature = local_in, global_in
        self.local_loss_weight, self.global_loss_weight = float(local_weight), float(global_weight)
        self.global_focal_gamma = float(global_gamma)
        self.local_context, self.global_context = bool(local_context), bool(global_context)
        want = sum(getattr(h, "context_dim", 0) for on, h in ((local_context, local_head),
                                                              (global_context, global_head)) if on)
        feeder = getattr(self.roi_heads, "context_feeder", None)
        have = feeder.context_dim if feeder is not None else 0
        if want != have:
            raise ValueError(
                f"the SWDA context is {want} wide (MODEL.SWDA.LOCAL_CONTEXT / GLOBAL_CONTEXT) but the ROI heads "
                f"{type(self.roi_heads).__name__} (MODEL.ROI_HEADS.NAME) take {have}: with a context use "
                "ContextStandardROIHeads (FPN, VGG16) or ContextRes5ROIHeads (C4), without one the plain heads"
            )

    def _add_swda_context(self, module, inputs, features):
        """Backbone forward hook: the per-image SWDA context, ``cat([global, local])`` (N, 128 each), added
        to the output dict under SWDA_CONTEXT_KEY (SWDA's order in front of the box feature)."""
        if not self._context_enabled:
            return None
        parts = []
        if self.global_context:
            parts.append(self.da_global_head.context(features[self.global_in_feature]))
        if self.local_context:
            parts.append(self.da_local_head.context(features[self.local_in_feature]))
        return {**features, SWDA_CONTEXT_KEY: torch.cat(parts, dim=1)}

    @contextlib.contextmanager
    def _without_context(self):
        was = self._context_enabled
        self._context_enabled = False
        try:
            yield
        finally:
            self._context_enabled = was

    # ---- forward --------------------------------------------------------------------------------------
    def forward(
        self,
        batched_inputs: List[Dict[str, torch.Tensor]],
        target_inputs: Optional[List[Dict[str, torch.Tensor]]] = None,
    ):
        """
        Args:
            batched_inputs: source batch, detectron2's format (list of dicts with "image" (C, H, W) in
                0-255 and, in training, "instances").
            target_inputs: unlabelled target batch (list of dicts with "image"; other keys ignored), or
                None for a source-only / detection-only step.

        Returns:
            eval: list of dicts with "instances" (GeneralizedRCNN inference on ``batched_inputs``).
            training: dict name -> scalar loss tensor (see the class docstring).
        """
        if not self.training or target_inputs is None or not self.alignment_enabled:
            return super().forward(batched_inputs)
        if len(target_inputs) == 0:
            raise ValueError("target_inputs is an empty list: pass None for a step without a target batch")

        with self._recorder.recording() as record:
            losses = super().forward(batched_inputs)
            source = dict(record)
        target = self._target_features(target_inputs)
        losses.update(self._alignment_losses(source, target))
        return losses

    def _target_features(self, target_inputs: List[Dict[str, torch.Tensor]]) -> dict:
        """Backbone features (and, for the instance head, top-N proposal box features) of the target batch."""
        images = self.preprocess_image(target_inputs)  # reads only x["image"]
        with self._without_context():
            features = self.backbone(images.tensor)
        out = {"features": features}
        if self.da_ins_head is not None:
            # proposals are detached by the RPN anyway; no_grad also drops the target RPN head's graph
            with torch.no_grad(), _inference_mode_flag(self.proposal_generator):
                proposals, _ = self.proposal_generator(images, features, None)
            boxes = []
            for p in proposals:
                k = min(self.ins_target_proposals, len(p))
                boxes.append(p.proposal_boxes[p.objectness_logits.topk(k).indices])
            out["roi_counts"] = [len(b) for b in boxes]
            out["roi_features"] = self._roi_box_features(features, boxes)
        return out

    def _roi_box_features(self, features: Dict[str, torch.Tensor], boxes: List[Boxes]) -> torch.Tensor:
        return roi_box_features(self.roi_heads, features, boxes, self._roi_kind)

    def _img_domain_loss(self, logits: List[torch.Tensor], domain: int) -> torch.Tensor:
        if self.img_loss == "focal":
            per_level = [domain_focal(z, domain, self.img_focal_gamma) for z in logits]
        else:
            per_level = [domain_bce(z, domain) for z in logits]
        return torch.stack(per_level).mean()

    def _alignment_losses(self, source: dict, target: dict) -> Dict[str, torch.Tensor]:
        losses = {}
        metrics = {}
        domains = ((source, SOURCE_LABEL), (target, TARGET_LABEL))
        names = {SOURCE_LABEL: "source", TARGET_LABEL: "target"}
        if self.da_img_head is not None:
            per_domain = []
            for feats, label in domains:
                levels = [feats["features"][f] for f in self.img_in_features]
                logits = self.da_img_head(levels)
                per_domain.append(self._img_domain_loss(logits, label))
                metrics[f"img_acc_{names[label]}"] = _domain_accuracy(logits, label)
            losses["loss_da_img"] = self.img_loss_weight * 0.5 * (per_domain[0] + per_domain[1])
        if self.da_ins_head is not None:
            per_domain = []
            for feats, label in domains:
                logits = self.da_ins_head(feats["roi_features"])
                per_domain.append(domain_bce(logits, label))
                metrics[f"ins_acc_{names[label]}"] = _domain_accuracy([logits], label)
            losses["loss_da_ins"] = self.ins_loss_weight * 0.5 * (per_domain[0] + per_domain[1])
        if self.da_local_head is not None:
            per_domain = []
            for feats, label in domains:
                probs = self.da_local_head(feats["features"][self.local_in_feature])
                per_domain.append(domain_least_squares(probs, label))
                metrics[f"local_acc_{names[label]}"] = _domain_accuracy([probs - 0.5], label)
            # SWDA: 0.5 * mean(D_s^2) + 0.5 * mean((1 - D_t)^2)
            losses["loss_da_local"] = self.local_loss_weight * 0.5 * (per_domain[0] + per_domain[1])
        if self.da_global_head is not None:
            per_domain = []
            for feats, label in domains:
                logits = self.da_global_head(feats["features"][self.global_in_feature])
                per_domain.append(domain_softmax_focal(logits, label, self.global_focal_gamma))
                metrics[f"global_acc_{names[label]}"] = _domain_accuracy([logits[:, 1] - logits[:, 0]], label)
            # SWDA: 0.5 * FL(source, 0) + 0.5 * FL(target, 1)
            losses["loss_da_global"] = self.global_loss_weight * 0.5 * (per_domain[0] + per_domain[1])
        self.last_alignment_metrics = metrics
        if self.cst_weight > 0:
            per_domain = [self._consistency(feats) for feats, _ in domains]
            losses["loss_da_cst"] = self.cst_weight * 0.5 * (per_domain[0] + per_domain[1])
        return losses

    def _consistency(self, feats: dict) -> torch.Tensor:
        """DA-Faster's consistency term on one domain's batch.

        A second pass through both heads with ``reverse_gradient=False``: as in DA-Faster's reference
        implementation, the features in front of the heads are pulled towards consistency (gradient
        scaled by +lambda, not reversed), while the adversarial passes above stay reversed.
        """
        levels = [feats["features"][f] for f in self.img_in_features]
        img_probs = [z.sigmoid() for z in self.da_img_head(levels, reverse_gradient=False)]
        ins_probs = self.da_ins_head(feats["roi_features"], reverse_gradient=False).sigmoid()
        counts = torch.as_tensor(feats["roi_counts"], device=ins_probs.device)
        image_index = torch.repeat_interleave(torch.arange(len(counts), device=ins_probs.device), counts)
        return consistency_loss(img_probs, ins_probs, image_index)
