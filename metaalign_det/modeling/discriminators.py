"""Domain discriminators (DA-Faster R-CNN): an image-level and an instance-level head.

Both start with a gradient-reversal layer, so the one backward pass of the total loss trains the head to
tell source (label 0) from target (label 1) and pushes the features in front of it the other way.
Both output raw logits (log-odds of "target"); the losses live in :mod:`metaalign_det.modeling.losses`.

Heads are looked up by name in :data:`DA_HEAD_REGISTRY` (``MODEL.DA_HEADS.IMG_HEAD_NAME`` /
``INS_HEAD_NAME``), so a user can register their own::

    @DA_HEAD_REGISTRY.register()
    class MyImageHead(nn.Module):
        def __init__(self, cfg, input_shape): ...
        def forward(self, features, reverse_gradient=True): ...   # same contract as ImageDomainHead

Contract of a head's ``forward(x, reverse_gradient=True)``: same as the builtin heads below. The
``reverse_gradient=False`` call is only made when the consistency loss is on (``CST_WEIGHT > 0``).
"""
from typing import Dict, List, Sequence, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

from .grl import GradientReversal

__all__ = [
    "DA_HEAD_REGISTRY",
    "ImageDomainHead",
    "InstanceDomainHead",
    "build_img_da_head",
    "build_ins_da_head",
    "select_feature_shapes",
]

DA_HEAD_REGISTRY = Registry("DA_HEAD")
DA_HEAD_REGISTRY.__doc__ = """
Registry for domain-discriminator heads. The registered object is called with ``(cfg, input_shape)``:
image-level heads get the backbone's ``output_shape()`` dict (or one ShapeSpec), instance-level heads
the per-ROI feature dimension (int). It must return an ``nn.Module``.
"""


def select_feature_shapes(
    in_features: Sequence[str], input_shape: Dict[str, ShapeSpec], key: str = "MODEL.DA_HEADS.IMG_IN_FEATURES"
) -> List[ShapeSpec]:
    """Shapes of the named backbone outputs, or one clear error naming ``key``, the bad and the valid names."""
    names = list(in_features)
    if not names:
        raise ValueError(f"{key} is empty: name at least one backbone output ({sorted(input_shape)})")
    bad = [n for n in names if n not in input_shape]
    if bad:
        raise ValueError(
            f"{key} names unknown backbone feature(s) {bad}; this backbone outputs {sorted(input_shape)}"
        )
    return [input_shape[n] for n in names]


@DA_HEAD_REGISTRY.register()
class ImageDomainHead(nn.Module):
    """Per-location image-level discriminator: GRL -> 1x1 conv -> ReLU -> 1x1 conv -> 1 logit per location.

    Several feature levels (FPN) share this one head (the levels must have equal channels), as in
    DA-Faster's FPN variant: the head is applied to each level separately.

    ``forward(x, reverse_gradient=True)``:
        x: (N, C, H, W) feature map, or a list of them (one per level; H, W may differ).
        returns: (N, 1, H, W) logits, or a list of them in the same order.
    ``reverse_gradient=False`` scales the gradient into ``x`` by ``+grl_weight`` instead of reversing it
    (DA-Faster's consistency branch).
    """

    @configurable
    def __init__(self, *, in_channels: int, hidden_dim: int = 512, grl_weight: float = 0.1,
                 init_std: float = 0.001):
        """
        Args:
            in_channels: C of the feature map(s).
            hidden_dim: channels of the hidden 1x1 conv.
            grl_weight: gradient-reversal lambda (DA-Faster: 0.1).
            init_std: std of the normal init of both convs (DA-Faster: 0.001). With two tiny layers the
                head sits at a saddle (logits ~0) for thousands of iterations; short schedules need more.
        """
        super().__init__()
        self.grl = GradientReversal(grl_weight)
        self.conv1 = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
        self.conv2 = nn.Conv2d(hidden_dim, 1, kernel_size=1)
        # DA-Faster's init: tiny weights, zero bias -> logits ~0 -> the loss starts at ~log 2
        for layer in (self.conv1, self.conv2):
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.constant_(layer.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, input_shape: Union[ShapeSpec, Dict[str, ShapeSpec]]):
        if isinstance(input_shape, ShapeSpec):
            in_channels = input_shape.channels
        else:
            shapes = select_feature_shapes(cfg.MODEL.DA_HEADS.IMG_IN_FEATURES, input_shape)
            channels = {s.channels for s in shapes}
            if len(channels) != 1:
                per_level = dict(zip(cfg.MODEL.DA_HEADS.IMG_IN_FEATURES, [s.channels for s in shapes]))
                raise ValueError(
                    "MODEL.DA_HEADS.IMG_IN_FEATURES: one image-level head is shared by all listed levels, "
                    f"so they need equal channels; got {per_level}"
                )
            in_channels = channels.pop()
        return {
            "in_channels": in_channels,
            "hidden_dim": cfg.MODEL.DA_HEADS.IMG_HIDDEN_DIM,
            "grl_weight": cfg.MODEL.DA_HEADS.IMG_GRL_WEIGHT,
            "init_std": cfg.MODEL.DA_HEADS.IMG_INIT_STD,
        }

    def _forward_level(self, x: torch.Tensor, reverse_gradient: bool) -> torch.Tensor:
        x = self.grl(x, reverse=reverse_gradient)
        return self.conv2(F.relu(self.conv1(x)))

    def forward(self, x, reverse_gradient: bool = True):
        if torch.is_tensor(x):
            return self._forward_level(x, reverse_gradient)
        return [self._forward_level(level, reverse_gradient) for level in x]


@DA_HEAD_REGISTRY.register()
class InstanceDomainHead(nn.Module):
    """Instance-level (per-ROI) discriminator, DA-Faster's MLP:
    GRL -> FC -> ReLU -> Dropout -> FC -> ReLU -> Dropout -> FC -> 1 logit.

    ``forward(x, reverse_gradient=True)``:
        x: (R, D) per-ROI features (anything with R rows is flattened to (R, D)).
        returns: (R, 1) logits.
    """

    @configurable
    def __init__(self, *, in_dim: int, hidden_dim: int = 1024, grl_weight: float = 0.1, dropout: float = 0.5):
        """
        Args:
            in_dim: D, the box-head feature dimension of one ROI.
            hidden_dim: width of the two hidden FC layers.
            grl_weight: gradient-reversal lambda (DA-Faster: 0.1).
            dropout: drop probability after each hidden layer (training only).
        """
        super().__init__()
        self.grl = GradientReversal(grl_weight)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 1)
        self.dropout = float(dropout)
        # DA-Faster's init (std 0.01, 0.01, 0.05; zero bias): logits start near 0, loss near log 2
        for layer, std in ((self.fc1, 0.01), (self.fc2, 0.01), (self.fc3, 0.05)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.constant_(layer.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, input_shape: Union[int, ShapeSpec]):
        if isinstance(input_shape, ShapeSpec):
            in_dim = input_shape.channels * (input_shape.height or 1) * (input_shape.width or 1)
        else:
            in_dim = int(input_shape)
        return {
            "in_dim": in_dim,
            "hidden_dim": cfg.MODEL.DA_HEADS.INS_HIDDEN_DIM,
            "grl_weight": cfg.MODEL.DA_HEADS.INS_GRL_WEIGHT,
            "dropout": cfg.MODEL.DA_HEADS.INS_DROPOUT,
        }

    def forward(self, x: torch.Tensor, reverse_gradient: bool = True) -> torch.Tensor:
        x = self.grl(x.flatten(1), reverse=reverse_gradient)
        x = F.dropout(F.relu(self.fc1(x)), p=self.dropout, training=self.training)
        x = F.dropout(F.relu(self.fc2(x)), p=self.dropout, training=self.training)
        return self.fc3(x)


def _get_head(name: str, key: str):
    try:
        return DA_HEAD_REGISTRY.get(name)
    except KeyError:
        registered = sorted(k for k, _ in DA_HEAD_REGISTRY)
        raise KeyError(f"{key} = {name!r} is not in DA_HEAD_REGISTRY; registered heads: {registered}") from None


def build_img_da_head(cfg, input_shape: Union[ShapeSpec, Dict[str, ShapeSpec]]) -> nn.Module:
    """Build ``MODEL.DA_HEADS.IMG_HEAD_NAME`` from DA_HEAD_REGISTRY with the backbone's output shapes."""
    return _get_head(cfg.MODEL.DA_HEADS.IMG_HEAD_NAME, "MODEL.DA_HEADS.IMG_HEAD_NAME")(cfg, input_shape)


def build_ins_da_head(cfg, in_dim: Union[int, ShapeSpec]) -> nn.Module:
    """Build ``MODEL.DA_HEADS.INS_HEAD_NAME`` from DA_HEAD_REGISTRY for D-dimensional ROI features."""
    return _get_head(cfg.MODEL.DA_HEADS.INS_HEAD_NAME, "MODEL.DA_HEADS.INS_HEAD_NAME")(cfg, in_dim)
