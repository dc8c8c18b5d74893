"""VGG16 backbone: torchvision layout, strides, freezing, weight loading."""
import pytest
import torch
import torchvision

import metaalign_det  # noqa: F401  (compat before detectron2)

# isort: split
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from metaalign_det.modeling.backbone.vgg import VGG16Backbone
from tests.helpers.configs import tiny_vgg_cfg


@pytest.fixture(scope="module")
def torchvision_vgg16_file(tmp_path_factory):
    """A torchvision.models.vgg16 (random init) state dict file, and the model.

    It keeps every ``features.*`` tensor and one ``classifier`` layer (classifier.6) so the loader must
    skip classifier keys; fc6 (400 MB) is left out to keep the test light.
    """
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("features.", "classifier.6."))}
    path = tmp_path_factory.mktemp("vgg") / "vgg16_tv.pth"
    torch.save(state, path)
    return str(path), model


def test_build_from_cfg_shapes_and_strides():
    cfg = tiny_vgg_cfg()
    cfg.MODEL.VGG.OUT_FEATURES = ["vgg_conv5", "vgg_conv4"]
    backbone = build_backbone(cfg)
    assert isinstance(backbone, VGG16Backbone)
    shapes = backbone.output_shape()
    assert list(shapes) == ["vgg_conv4", "vgg_conv5"]
    assert (shapes["vgg_conv4"].stride, shapes["vgg_conv4"].channels) == (8, 512)
    assert (shapes["vgg_conv5"].stride, shapes["vgg_conv5"].channels) == (16, 512)
    assert backbone.size_divisibility == 16
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 96))
    assert out["vgg_conv4"].shape == (1, 512, 8, 12)
    assert out["vgg_conv5"].shape == (1, 512, 4, 6)
    # torchvision's indices: conv5_3 is features.28, and no pool5 (index 30) is built
    assert len(backbone.features) == 30
    assert isinstance(backbone.features[28], torch.nn.Conv2d)


def test_conv4_only_does_not_build_block5():
    backbone = VGG16Backbone(out_features=["vgg_conv4"], freeze_blocks=0)
    assert len(backbone.features) == 23  # up to relu4_3: block-5 parameters would get no gradient (DDP)
    assert backbone.size_divisibility == 8


def test_torchvision_state_dict_loads_and_matches(torchvision_vgg16_file):
    path, tv_model = torchvision_vgg16_file
    backbone = VGG16Backbone(out_features=["vgg_conv5"], freeze_blocks=0, weights=path).eval()
    tv_state = tv_model.state_dict()
    own = backbone.state_dict()
    assert set(own) == {k for k in tv_state if k.startswith("features.")}
    for k, v in own.items():
        assert torch.equal(v, tv_state[k]), k
    # same numbers as torchvision's conv1_1..relu5_3
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)["vgg_conv5"], tv_model.features[:30](x))


def test_weights_via_cfg_and_freezing(torchvision_vgg16_file):
    path, tv_model = torchvision_vgg16_file
    cfg = tiny_vgg_cfg()
    cfg.MODEL.VGG.WEIGHTS = path
    cfg.MODEL.VGG.FREEZE_BLOCKS = 2
    backbone = build_backbone(cfg)
    assert torch.equal(backbone.features[10].weight, tv_model.features[10].weight)
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    # blocks 1-2 = conv1_1, conv1_2, conv2_1, conv2_2 = features.0, 2, 5, 7
    assert frozen == {f"features.{i}.{w}" for i in (0, 2, 5, 7) for w in ("weight", "bias")}


def test_missing_weights_file_error_names_key_and_path(tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=r"MODEL\.VGG\.WEIGHTS.*nope\.pth"):
        VGG16Backbone(weights=missing)


def test_wrong_layout_file_is_rejected(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(KeyError, match=r"MODEL\.VGG\.WEIGHTS.*features\.0\.weight"):
        VGG16Backbone(weights=str(path))


def test_stride4_outputs_for_swda():
    """vgg_conv3_2 = relu3_2 (SWDA's features[:14]) and vgg_conv3 = relu3_3: 256 channels at stride 4."""
    torch.manual_seed(0)
    net = VGG16Backbone(out_features=["vgg_conv5", "vgg_conv3_2", "vgg_conv3"])
    assert net.output_shape()["vgg_conv3_2"] == ShapeSpec(channels=256, stride=4)
    x = torch.randn(1, 3, 32, 48)
    out = net(x)
    assert out["vgg_conv3_2"].shape == out["vgg_conv3"].shape == (1, 256, 8, 12)
    assert out["vgg_conv5"].shape == (1, 512, 2, 3)
    ref = x
    for layer in list(net.features)[:14]:
        ref = layer(ref)
    torch.testing.assert_close(out["vgg_conv3_2"], ref)


def test_bad_config_values():
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        VGG16Backbone(out_features=["vgg_conv6"])
    with pytest.raises(ValueError, match="FREEZE_BLOCKS"):
        VGG16Backbone(freeze_blocks=6)
    # builds from a ShapeSpec too (the BACKBONE_REGISTRY signature)
    cfg = tiny_vgg_cfg()
    assert isinstance(VGG16Backbone(cfg, ShapeSpec(channels=3)), VGG16Backbone)
