"""Image-/instance-level discriminator heads: shapes on real C4 / FPN / VGG features, init, registry."""
import math

import pytest
import torch
from torch import nn

import metaalign_det  # noqa: F401  (compat before detectron2)

# isort: split
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from metaalign_det.modeling.discriminators import (
    DA_HEAD_REGISTRY,
    ImageDomainHead,
    InstanceDomainHead,
    build_img_da_head,
    build_ins_da_head,
)
from metaalign_det.modeling.losses import domain_bce
from tests.helpers.configs import tiny_c4_cfg, tiny_fpn_cfg, tiny_vgg_cfg


def _features(cfg, h, w):
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    with torch.no_grad():
        return backbone, backbone(torch.randn(2, 3, h, w))


@pytest.mark.parametrize(
    "make_cfg, names, h, w",
    [
        (tiny_c4_cfg, ["res4"], 64, 96),
        (tiny_fpn_cfg, ["p2", "p3", "p4", "p5", "p6"], 128, 160),
        (tiny_vgg_cfg, ["vgg_conv5"], 64, 96),
    ],
    ids=["c4-res4", "fpn-p2..p6", "vgg-conv5"],
)
def test_image_head_shapes_on_backbone_features(make_cfg, names, h, w):
    cfg = make_cfg()
    cfg.MODEL.DA_HEADS.IMG_IN_FEATURES = names
    backbone, feats = _features(cfg, h, w)
    head = build_img_da_head(cfg, backbone.output_shape())
    assert isinstance(head, ImageDomainHead)
    levels = [feats[n] for n in names]
    logits = head(levels)
    assert isinstance(logits, list) and len(logits) == len(names)
    for z, f, n in zip(logits, levels, names):
        stride = backbone.output_shape()[n].stride
        assert z.shape == (2, 1, f.shape[2], f.shape[3])
        assert f.shape[2] == math.ceil(h / stride) and f.shape[3] == math.ceil(w / stride)
    # one tensor in -> one tensor out
    assert head(levels[0]).shape == logits[0].shape
    # small init: the loss starts at ~log 2, as DA-Faster
    assert domain_bce(logits[0], 0).item() == pytest.approx(math.log(2.0), abs=0.02)


def test_image_head_is_shared_across_levels_and_needs_equal_channels():
    cfg = tiny_fpn_cfg()
    shapes = {"a": ShapeSpec(channels=8, stride=4), "b": ShapeSpec(channels=16, stride=8)}
    cfg.MODEL.DA_HEADS.IMG_IN_FEATURES = ["a", "b"]
    with pytest.raises(ValueError, match="equal channels"):
        build_img_da_head(cfg, shapes)
    cfg.MODEL.DA_HEADS.IMG_IN_FEATURES = ["a", "zz"]
    with pytest.raises(ValueError, match=r"IMG_IN_FEATURES.*'zz'.*\['a', 'b'\]"):
        build_img_da_head(cfg, shapes)


def test_image_head_gradient_reversed_or_scaled():
    head = ImageDomainHead(in_channels=4, hidden_dim=3, grl_weight=0.1)
    x = torch.randn(1, 4, 2, 2, requires_grad=True)
    head(x).sum().backward()
    g_rev = x.grad.clone()
    x.grad = None
    head(x, reverse_gradient=False).sum().backward()
    assert torch.count_nonzero(g_rev) > 0
    torch.testing.assert_close(g_rev, -x.grad)


def test_instance_head_shapes_dropout_and_init():
    torch.manual_seed(0)
    head = InstanceDomainHead(in_dim=20, hidden_dim=16, grl_weight=0.1)
    x = torch.randn(7, 20)
    assert head(x).shape == (7, 1)
    assert head(x.view(7, 5, 2, 2)).shape == (7, 1)  # pooled (R, C, h, w) features are flattened
    head.eval()
    torch.testing.assert_close(head(x), head(x))  # no dropout in eval
    head.train()
    outs = [head(torch.ones(64, 20) * 50) for _ in range(2)]
    assert not torch.equal(outs[0], outs[1])  # dropout active in training
    assert domain_bce(head(x), 1).item() == pytest.approx(math.log(2.0), abs=0.02)


def test_instance_head_from_config():
    cfg = tiny_fpn_cfg()
    cfg.MODEL.DA_HEADS.INS_HIDDEN_DIM = 24
    cfg.MODEL.DA_HEADS.INS_GRL_WEIGHT = 0.25
    head = build_ins_da_head(cfg, 64)
    assert isinstance(head, InstanceDomainHead)
    assert head.fc1.in_features == 64 and head.fc1.out_features == 24
    assert head.grl.weight == 0.25
    head = build_ins_da_head(cfg, ShapeSpec(channels=8, height=2, width=3))
    assert head.fc1.in_features == 48


@DA_HEAD_REGISTRY.register()
class _TestPoolingImageHead(nn.Module):
    """A user head: one logit per image (global average pool), selected by name in cfg."""

    def __init__(self, cfg, input_shape):
        super().__init__()
        channels = input_shape[cfg.MODEL.DA_HEADS.IMG_IN_FEATURES[0]].channels
        self.fc = nn.Linear(channels, 1)

    def forward(self, features, reverse_gradient=True):
        return [self.fc(f.mean(dim=(2, 3)))[:, :, None, None] for f in features]


def test_registry_selects_user_head_by_name():
    cfg = tiny_c4_cfg()
    cfg.MODEL.DA_HEADS.IMG_HEAD_NAME = "_TestPoolingImageHead"
    head = build_img_da_head(cfg, {"res4": ShapeSpec(channels=256, stride=16)})
    assert isinstance(head, _TestPoolingImageHead)
    assert head([torch.randn(3, 256, 4, 6)])[0].shape == (3, 1, 1, 1)


def test_unknown_head_name_error_names_the_key():
    cfg = tiny_c4_cfg()
    cfg.MODEL.DA_HEADS.INS_HEAD_NAME = "NoSuchHead"
    with pytest.raises(KeyError, match=r"MODEL.DA_HEADS.INS_HEAD_NAME.*NoSuchHead.*InstanceDomainHead"):
        build_ins_da_head(cfg, 16)


def test_image_head_init_std_from_config():
    cfg = tiny_fpn_cfg()
    shape = {"p3": ShapeSpec(channels=64, stride=8)}
    cfg.MODEL.DA_HEADS.IMG_IN_FEATURES = ["p3"]
    cfg.MODEL.DA_HEADS.IMG_HIDDEN_DIM = 256  # enough weights in conv2 for a stable std estimate
    default = build_img_da_head(cfg, shape)
    assert default.conv1.weight.std().item() == pytest.approx(0.001, rel=0.2)  # DA-Faster's init
    cfg.MODEL.DA_HEADS.IMG_INIT_STD = 0.05
    wide = build_img_da_head(cfg, shape)
    assert wide.conv1.weight.std().item() == pytest.approx(0.05, rel=0.2)
    assert wide.conv2.weight.std().item() == pytest.approx(0.05, rel=0.3)
