"""Strong-Weak Distribution Alignment (SWDA, Saito et al., CVPR 2019): its two discriminators.

* :class:`SWDALocalHead` -- the local ("strong") discriminator on a stride-4 map: 1x1 convs in -> 256 -> 128 -> 1
  with ReLUs, no biases, weights N(0, 0.01), a sigmoid: one probability P(target) per location, trained with
  a least-squares loss (:func:`~metaalign_det.modeling.losses.domain_least_squares`).
* :class:`SWDAGlobalHead` -- the global ("weak") discriminator on the stride-16 map: three 3x3 stride-2 convs
  (in -> 512 -> 128 -> 128, no biases), each followed by BN, ReLU and dropout, a global average pool and an FC
  128 -> 2: two logits per image (column 0 = source, 1 = target), trained with a softmax focal loss
  (:func:`~metaalign_det.modeling.losses.domain_softmax_focal`, gamma 5).

Both sit behind their own gradient reversal (SWDA: weight 1.0). Each also gives a 128-d **context vector**
per image (:meth:`context`): the local head's 128-channel map before its last conv, average-pooled; the global
head's pooled vector before its FC. As in SWDA the context is computed on the features with the gradient
stopped (``x.detach()``): the detection loss that reads it trains the discriminator's layers, not the
backbone. The ROI heads in :mod:`.context_roi_heads` concatenate it to every ROI's box feature.

Both are in ``DA_HEAD_REGISTRY`` (``MODEL.SWDA.LOCAL_HEAD_NAME`` / ``GLOBAL_HEAD_NAME``) and are built with
``(cfg, backbone.output_shape())``.
"""
from typing import Dict, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from .discriminators import DA_HEAD_REGISTRY, _get_head, select_feature_shapes
from .grl import GradientReversal

__all__ = ["SWDA_CONTEXT_DIM", "SWDALocalHead", "SWDAGlobalHead", "build_swda_local_head",
           "build_swda_global_head", "swda_context_dim"]

# width of each discriminator's context vector (SWDA: 128 each, so the box predictor's input grows by 256)
SWDA_CONTEXT_DIM = 128


def _one_channels(cfg, input_shape: Union[ShapeSpec, Dict[str, ShapeSpec]], name: str, key: str) -> int:
    if isinstance(input_shape, ShapeSpec):
        return input_shape.channels
    return select_feature_shapes([name], input_shape, key=key)[0].channels


@DA_HEAD_REGISTRY.register()
class SWDALocalHead(nn.Module):
    """SWDA's local discriminator: GRL -> 1x1 conv in->256 -> ReLU -> 1x1 conv 256->128 -> ReLU -> 1x1 conv
    128->1 -> sigmoid. No biases; weights N(0, ``init_std``).

    ``forward(x, reverse_gradient=True)``: x (N, C, H, W) -> (N, 1, H, W) probabilities P(target).
    ``context(x)``: x (N, C, H, W) -> (N, 128), the spatial mean of the 128-channel map, on ``x.detach()``.
    """

    @configurable
    def __init__(self, *, in_channels: int, grl_weight: float = 1.0, init_std: float = 0.01,
                 hidden_dims=(256, SWDA_CONTEXT_DIM)):
        """
        Args:
            in_channels: C of the stride-4 map (SWDA: 256; ResNet res2, VGG16 conv3).
            grl_weight: gradient-reversal lambda (SWDA: 1.0).
            init_std: std of the zero-mean normal init of the three convs (SWDA: 0.01).
            hidden_dims: the two hidden widths (SWDA: 256, 128; the second is the context width).
        """
        super().__init__()
        h1, h2 = hidden_dims
        self.grl = GradientReversal(grl_weight)
        self.conv1 = nn.Conv2d(in_channels, h1, kernel_size=1, bias=False)
        self.conv2 = nn.Conv2d(h1, h2, kernel_size=1, bias=False)
        self.conv3 = nn.Conv2d(h2, 1, kernel_size=1, bias=False)
        for layer in (self.conv1, self.conv2, self.conv3):
            nn.init.normal_(layer.weight, mean=0.0, std=init_std)
        self.context_dim = h2

    @classmethod
    def from_config(cls, cfg, input_shape: Union[ShapeSpec, Dict[str, ShapeSpec]]):
        s = cfg.MODEL.SWDA
        return {
            "in_channels": _one_channels(cfg, input_shape, s.LOCAL_IN_FEATURE, "MODEL.SWDA.LOCAL_IN_FEATURE"),
            "grl_weight": s.LOCAL_GRL_WEIGHT,
            "init_std": s.LOCAL_INIT_STD,
        }

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))

    def forward(self, x: torch.Tensor, reverse_gradient: bool = True) -> torch.Tensor:
        return torch.sigmoid(self.conv3(self._trunk(self.grl(x, reverse=reverse_gradient))))

    def context(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x.detach()).mean(dim=(2, 3))


@DA_HEAD_REGISTRY.register()
class SWDAGlobalHead(nn.Module):
    """SWDA's global discriminator: GRL -> 3 x (3x3 stride-2 conv, no bias -> BN -> ReLU -> dropout) with
    widths in->512->128->128 -> global average pool -> FC 128->2.

    ``forward(x, reverse_gradient=True)``: x (N, C, H, W) -> (N, 2) logits (column 1 = target).
    ``context(x)``: x (N, C, H, W) -> (N, 128), the pooled vector before the FC, on ``x.detach()``.
    Init: PyTorch's defaults, as SWDA (it does not re-initialise this head).
    """

    @configurable
    def __init__(self, *, in_channels: int, grl_weight: float = 1.0, dropout: float = 0.5,
                 widths=(512, 128, SWDA_CONTEXT_DIM)):
        """
        Args:
            in_channels: C of the stride-16 map (SWDA: 1024 for ResNet res4, 512 for VGG16 conv5_3).
            grl_weight: gradient-reversal lambda (SWDA: 1.0).
            dropout: drop probability after each conv block, training only (SWDA: F.dropout's 0.5).
            widths: the three conv widths (SWDA: 512, 128, 128; the last is the context width).
        """
        super().__init__()
        self.grl = GradientReversal(grl_weight)
        chans = [in_channels] + list(widths)
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], kernel_size=3, stride=2, padding=1, bias=False) for i in range(3)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in chans[1:])
        self.fc = nn.Linear(chans[-1], 2)
        self.dropout = float(dropout)
        self.context_dim = chans[-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Union[ShapeSpec, Dict[str, ShapeSpec]]):
        s = cfg.MODEL.SWDA
        return {
            "in_channels": _one_channels(cfg, input_shape, s.GLOBAL_IN_FEATURE, "MODEL.SWDA.GLOBAL_IN_FEATURE"),
            "grl_weight": s.GLOBAL_GRL_WEIGHT,
            "dropout": s.GLOBAL_DROPOUT,
        }

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = F.dropout(F.relu(norm(conv(x))), p=self.dropout, training=self.training)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, reverse_gradient: bool = True) -> torch.Tensor:
        return self.fc(self._pooled(self.grl(x, reverse=reverse_gradient)))

    def context(self, x: torch.Tensor) -> torch.Tensor:
        return self._pooled(x.detach())


def build_swda_local_head(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build ``MODEL.SWDA.LOCAL_HEAD_NAME`` from DA_HEAD_REGISTRY with the backbone's output shapes."""
    select_feature_shapes([cfg.MODEL.SWDA.LOCAL_IN_FEATURE], input_shape, key="MODEL.SWDA.LOCAL_IN_FEATURE")
    return _get_head(cfg.MODEL.SWDA.LOCAL_HEAD_NAME, "MODEL.SWDA.LOCAL_HEAD_NAME")(cfg, input_shape)


def build_swda_global_head(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build ``MODEL.SWDA.GLOBAL_HEAD_NAME`` from DA_HEAD_REGISTRY with the backbone's output shapes."""
    select_feature_shapes([cfg.MODEL.SWDA.GLOBAL_IN_FEATURE], input_shape, key="MODEL.SWDA.GLOBAL_IN_FEATURE")
    return _get_head(cfg.MODEL.SWDA.GLOBAL_HEAD_NAME, "MODEL.SWDA.GLOBAL_HEAD_NAME")(cfg, input_shape)


def swda_context_dim(cfg) -> int:
    """Width the SWDA context adds to every ROI's box feature: 128 per enabled context (SWDA --lc / --gc)."""
    s = cfg.MODEL.SWDA
    return SWDA_CONTEXT_DIM * (int(bool(s.LOCAL_CONTEXT)) + int(bool(s.GLOBAL_CONTEXT)))
