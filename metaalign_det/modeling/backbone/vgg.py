"""VGG16 backbone as the domain-adaptation literature uses it (DA-Faster, SWDA, ...): torchvision's
``vgg16().features`` layout, conv blocks 1-5, with the last max-pool dropped so conv5 has stride 16.

Layer indices are torchvision's (``features.0`` = conv1_1 ... ``features.28`` = conv5_3), so a
torchvision state dict loads key for key (``classifier.*`` is ignored).

Outputs (``MODEL.VGG.OUT_FEATURES``):

=================  =======  ========  =====================================
name               stride   channels  layer
=================  =======  ========  =====================================
``vgg_conv3_2``    4        256       relu3_2 (``features.13``): SWDA's local map (its ``features[:14]``)
``vgg_conv3``      4        256       relu3_3 (``features.15``), before pool3
``vgg_conv4``      8        512       relu4_3 (``features.22``), before pool4
``vgg_conv5``      16       512       relu5_3 (``features.29``)
=================  =======  ========  =====================================

Input normalisation: torchvision's ImageNet weights expect RGB in [0, 1] normalised by ImageNet
mean/std. detectron2 feeds 0-255 pixels, so a config using them sets::

    INPUT.FORMAT: "RGB"
    MODEL.PIXEL_MEAN: [123.675, 116.28, 103.53]   # 255 * (0.485, 0.456, 0.406)
    MODEL.PIXEL_STD: [58.395, 57.12, 57.375]      # 255 * (0.229, 0.224, 0.225)

See ``docs/model.md`` for the ROI-head keys of a VGG16 Faster R-CNN.
"""
import os
from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from torch import nn

__all__ = ["VGG16Backbone", "build_vgg16_backbone", "VGG16_OUTPUTS"]

# torchvision's vgg16 "D" configuration: conv widths, "M" = 2x2 max-pool. The final pool is left out.
_VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]

# output name -> (index of its ReLU in `features`, stride, channels, conv block it ends)
VGG16_OUTPUTS = {
    "vgg_conv3_2": (13, 4, 256, 3),
    "vgg_conv3": (15, 4, 256, 3),
    "vgg_conv4": (22, 8, 512, 4),
    "vgg_conv5": (29, 16, 512, 5),
}


def _make_layers(in_channels: int, last_index: int) -> nn.Sequential:
    """torchvision's ``make_layers`` for VGG16 (no BN), truncated after ``features[last_index]``."""
    layers: List[nn.Module] = []
    for v in _VGG16_LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
            # inplace: the conv before it does not need its output for backward, and this saves a
            # full-resolution activation per layer
            layers.append(nn.ReLU(inplace=True))
            in_channels = v
    return nn.Sequential(*layers[: last_index + 1])


def _block_of_each_layer(num_layers: int) -> List[int]:
    """The conv block (1..5) of each of the first ``num_layers`` layers; a max-pool ends its block."""
    block, out = 1, []
    for layer in _make_layers(3, num_layers - 1):
        out.append(block)
        if isinstance(layer, nn.MaxPool2d):
            block += 1
    return out


class VGG16Backbone(Backbone):
    """VGG16 conv1_1..conv5_3 (no pool5) as a detectron2 :class:`Backbone`.

    ``forward(x)``: x (N, C_in, H, W) normalised images -> dict name -> (N, 512, H // s, W // s) for
    the requested outputs (stride s). detectron2 pads H, W to a multiple of :attr:`size_divisibility`,
    so the division is exact.
    """

    @configurable
    def __init__(
        self,
        *,
        out_features: Sequence[str] = ("vgg_conv5",),
        freeze_blocks: int = 0,
        weights: str = "",
        in_channels: int = 3,
    ):
        """
        Args:
            out_features: any of "vgg_conv3_2", "vgg_conv3", "vgg_conv4", "vgg_conv5". Layers past the
                deepest one are not built (unused parameters would break DDP).
            freeze_blocks: the first ``freeze_blocks`` conv blocks (0..5) get ``requires_grad=False``.
            weights: path of a torchvision-layout VGG16 state dict (``features.N.weight/bias``) loaded
                here; "" = random init.
            in_channels: image channels (3).
        """
        super().__init__()
        out_features = list(out_features)
        bad = [f for f in out_features if f not in VGG16_OUTPUTS]
        if not out_features or bad:
            raise ValueError(
                f"MODEL.VGG.OUT_FEATURES = {out_features}: unknown name(s) {bad}; choose from {list(VGG16_OUTPUTS)}"
            )
        if not 0 <= freeze_blocks <= 5:
            raise ValueError(f"MODEL.VGG.FREEZE_BLOCKS must be in 0..5, got {freeze_blocks}")
        # keep the order of the network, not of the config
        self.out_feature_names = sorted(out_features, key=lambda f: VGG16_OUTPUTS[f][0])
        self._out_index = {VGG16_OUTPUTS[f][0]: f for f in self.out_feature_names}

        self.features = _make_layers(in_channels, max(self._out_index))
        if weights:
            self.load_torchvision_weights(weights)
        self.freeze_blocks = freeze_blocks
        for layer, block in zip(self.features, _block_of_each_layer(len(self.features))):
            if block <= freeze_blocks:
                for p in layer.parameters():
                    p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {
            "out_features": cfg.MODEL.VGG.OUT_FEATURES,
            "freeze_blocks": cfg.MODEL.VGG.FREEZE_BLOCKS,
            "weights": cfg.MODEL.VGG.WEIGHTS,
            "in_channels": input_shape.channels,
        }

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """name -> ShapeSpec(channels, stride) of each output (public API; not Backbone's private tables)."""
        return {f: ShapeSpec(channels=VGG16_OUTPUTS[f][2], stride=VGG16_OUTPUTS[f][1])
                for f in self.out_feature_names}

    @property
    def size_divisibility(self) -> int:
        # pad to the largest stride so every max-pool halves exactly and the strides are exact
        return max(VGG16_OUTPUTS[f][1] for f in self.out_feature_names)

    def load_torchvision_weights(self, path: str) -> None:
        """Load ``features.N.*`` from a torchvision VGG16 state dict file (``torch.save(vgg16().state_dict())``).

        ``classifier.*`` and layers this backbone did not build are ignored; every built conv must be in
        the file with a matching shape.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"MODEL.VGG.WEIGHTS = {path!r}: no such file (expected a torchvision vgg16 state dict, "
                f"e.g. torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict(), path))"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        own = self.state_dict()
        wanted = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(wanted))
        if missing:
            raise KeyError(
                f"MODEL.VGG.WEIGHTS = {path!r} is not a torchvision vgg16 state dict: missing {missing}"
            )
        for k, v in wanted.items():
            if v.shape != own[k].shape:
                raise ValueError(
                    f"MODEL.VGG.WEIGHTS = {path!r}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
                )
        self.load_state_dict(wanted, strict=True)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._out_index:
                outputs[self._out_index[i]] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_vgg16_backbone(cfg, input_shape: ShapeSpec) -> VGG16Backbone:
    """``MODEL.BACKBONE.NAME: "build_vgg16_backbone"``; reads ``MODEL.VGG.*``."""
    return VGG16Backbone(cfg, input_shape)
