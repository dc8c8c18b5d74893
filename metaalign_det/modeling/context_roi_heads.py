"""ROI heads that append SWDA's context vectors to every ROI's box feature before the box predictor.

SWDA (and the official MetaAlign detector built on it) concatenates the discriminators' 128-d context vectors
of an image, tiled over that image's ROIs, in front of each ROI's box feature -- the output of the box head
(``_head_to_tail``: ResNet layer4 + spatial mean, or VGG16 fc6/fc7) -- and feeds the result to the classifier
and box regressor, whose input width grows by the context width (256 with both contexts):

* :class:`ContextRes5ROIHeads` (C4): pooler(res4) -> res5 -> spatial mean (D = 2048 for R50) -> **[ctx, D]**
  -> box_predictor.
* :class:`ContextStandardROIHeads` (FPN, VGG16): pooler -> box head (``FastRCNNConvFCHead``: flatten -> FCs,
  D = FC_DIM) -> **[ctx, D]** -> box_predictor.

The context arrives in the backbone's output dict under :data:`SWDA_CONTEXT_KEY` as an (N, W) tensor (one row
per image; :class:`~metaalign_det.modeling.meta_arch.DomainAdaptiveRCNN` puts it there); ROI r of image i gets
row i. How it reaches the predictor without copying detectron2's forward: :meth:`forward` opens a scope
holding the context; a pre-hook on the box pooler records the number of boxes per image, a pre-hook on
``box_predictor`` replaces its input ``x`` (R, D) by ``cat([ctx[image of r], x])`` (R, W + D). Outside that
scope (e.g. the instance discriminator's target pass through pooler + box head) the hooks do nothing.
"""
import contextlib
from typing import List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, FastRCNNOutputLayers, Res5ROIHeads, StandardROIHeads

from .swda_heads import swda_context_dim

__all__ = ["SWDA_CONTEXT_KEY", "ContextRes5ROIHeads", "ContextStandardROIHeads", "ContextFeeder"]

# key of the (N, W) per-image context in the backbone's output dict
SWDA_CONTEXT_KEY = "swda_context"


class ContextFeeder:
    """The per-call state of a context ROI head; its bound methods are the pooler / predictor hooks (so
    ``copy.deepcopy`` of the model rebinds them to the copy). Nothing is kept after a call ends."""

    def __init__(self, context_dim: int):
        self.context_dim = int(context_dim)
        self.context: Optional[torch.Tensor] = None
        self.counts: Optional[List[int]] = None

    @contextlib.contextmanager
    def active(self, context: Optional[torch.Tensor]):
        if context is None:
            raise KeyError(
                f"the context ROI heads need the per-image SWDA context in the features under {SWDA_CONTEXT_KEY!r}: "
                "use META_ARCHITECTURE DomainAdaptiveRCNN with MODEL.SWDA.LOCAL_CONTEXT and/or GLOBAL_CONTEXT on"
            )
        if context.dim() != 2 or context.shape[1] != self.context_dim:
            raise ValueError(f"SWDA context has shape {tuple(context.shape)}, the box predictor expects "
                             f"(N, {self.context_dim})")
        self.context, self.counts = context, None
        try:
            yield
        finally:
            self.context, self.counts = None, None

    def pooler_input(self, module, args, kwargs):
        if self.context is not None and self.counts is None:
            box_lists = args[1] if len(args) > 1 else kwargs["box_lists"]
            self.counts = [len(b) for b in box_lists]

    def predictor_input(self, module, args, kwargs):
        if self.context is None:
            return None
        x = (args[0] if args else kwargs.pop("x")).flatten(1)
        counts = self.counts
        if counts is None or sum(counts) != x.shape[0] or len(counts) != self.context.shape[0]:
            raise RuntimeError(f"SWDA context: {x.shape[0]} ROI features but box counts {counts} for "
                               f"{self.context.shape[0]} images")
        index = torch.repeat_interleave(torch.arange(len(counts), device=x.device),
                                        torch.as_tensor(counts, device=x.device))
        # SWDA's order: [global context, local context, box feature] (the caller builds the context that way)
        x = torch.cat([self.context.to(x.dtype)[index], x], dim=1)
        return (x,) + tuple(args[1:]), kwargs


def _widened_predictor(cfg, shape: ShapeSpec, context_dim: int) -> FastRCNNOutputLayers:
    channels = shape.channels * (shape.height or 1) * (shape.width or 1)
    return FastRCNNOutputLayers(cfg, ShapeSpec(channels=channels + context_dim))


def _check_context_dim(context_dim: int) -> int:
    if context_dim <= 0:
        raise ValueError("MODEL.ROI_HEADS.NAME is a context ROI head but MODEL.SWDA.LOCAL_CONTEXT and "
                         "GLOBAL_CONTEXT are both off: turn one on, or use StandardROIHeads / Res5ROIHeads")
    return context_dim


@ROI_HEADS_REGISTRY.register()
class ContextStandardROIHeads(StandardROIHeads):
    """StandardROIHeads whose box predictor reads ``[context, box-head output]`` (FPN, VGG16). Extra argument
    ``context_dim`` (W, 128 per SWDA context); the box predictor is built for D + W inputs."""

    @configurable
    def __init__(self, *, context_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.context_feeder = ContextFeeder(_check_context_dim(context_dim))
        self.box_pooler.register_forward_pre_hook(self.context_feeder.pooler_input, with_kwargs=True)
        self.box_predictor.register_forward_pre_hook(self.context_feeder.predictor_input, with_kwargs=True)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["context_dim"] = _check_context_dim(swda_context_dim(cfg))
        ret["box_predictor"] = _widened_predictor(cfg, ret["box_head"].output_shape, ret["context_dim"])
        return ret

    def forward(self, images, features, proposals, targets=None):
        with self.context_feeder.active(features.get(SWDA_CONTEXT_KEY)):
            return super().forward(images, features, proposals, targets)


@ROI_HEADS_REGISTRY.register()
class ContextRes5ROIHeads(Res5ROIHeads):
    """Res5ROIHeads whose box predictor reads ``[context, spatial mean of res5]`` (C4), as SWDA's ResNet."""

    @configurable
    def __init__(self, *, context_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.context_feeder = ContextFeeder(_check_context_dim(context_dim))
        self.pooler.register_forward_pre_hook(self.context_feeder.pooler_input, with_kwargs=True)
        self.box_predictor.register_forward_pre_hook(self.context_feeder.predictor_input, with_kwargs=True)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["context_dim"] = _check_context_dim(swda_context_dim(cfg))
        out_channels = ret["res5"][-1].out_channels
        ret["box_predictor"] = _widened_predictor(cfg, ShapeSpec(channels=out_channels), ret["context_dim"])
        return ret

    def forward(self, images, features, proposals, targets=None):
        with self.context_feeder.active(features.get(SWDA_CONTEXT_KEY)):
            return super().forward(images, features, proposals, targets)
