"""The one place for the tests' tiny detectron2 configs and inputs (``from tests.helpers.configs import ...``).

Three families, each built for a different kind of test (all CPU, random init, a fresh cfg per call):

- :func:`tiny_c4_cfg`, :func:`tiny_fpn_cfg`, :func:`tiny_vgg_cfg`: DomainAdaptiveRCNN models for in-process
  forward/backward tests. R18 (RES2_OUT_CHANNELS 64), small RPN top-k, 32 ROIs per image, 3 classes;
  :func:`add_metaalign_config` applied and the DA heads OFF -- :func:`enable_da` switches them on.
  :func:`make_inputs` / :func:`make_image_input` give matching source/target batches.
- :func:`quick_cfg`: the trainer tests' cfg -- configs/quick_schedules/Base-quick-R18-FPN.yaml on a
  registered toy pair (images on disk), through the same ``setup_cfg`` as tools/train_net.py.
- :func:`tiny_rcnn_cfg`: a plain GeneralizedRCNN (no DA heads) for the command-line tool tests, which dump
  it to YAML and load it back in a fresh interpreter.
"""
import os

import torch

import metaalign_det  # noqa: F401  (applies compat before detectron2 is imported)
import metaalign_det.modeling  # noqa: F401  (registers DomainAdaptiveRCNN, DA heads, VGG16)

# isort: split
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances

from metaalign_det.cli import setup_cfg
from metaalign_det.config import add_metaalign_config
from tests.toy_data import register_toy_pair

__all__ = ["tiny_c4_cfg", "tiny_fpn_cfg", "tiny_vgg_cfg", "enable_da", "make_inputs", "make_image_input",
           "quick_cfg", "tiny_rcnn_cfg"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = os.path.join(ROOT, "configs", "quick_schedules", "Base-quick-R18-FPN.yaml")


def _base_cfg():
    cfg = get_cfg()
    add_metaalign_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "DomainAdaptiveRCNN"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    cfg.MODEL.DA_HEADS.IMG_HIDDEN_DIM = 16
    cfg.MODEL.DA_HEADS.INS_HIDDEN_DIM = 32
    cfg.MODEL.DA_HEADS.INS_TARGET_PROPOSALS = 16
    return cfg


def _tiny_resnet(cfg):
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 32  # R18 allows any stem width; halves the stem's cost
    # only the C4 res5 head uses bottleneck blocks: 16 * 8 = 128 bottleneck channels instead of 512
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 16


def tiny_c4_cfg():
    """R18-C4: backbone up to res4 (stride 16, 256 ch), Res5ROIHeads (box feature 512). Images <= 64x96."""
    cfg = _base_cfg()
    _tiny_resnet(cfg)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4  # res5 halves it: 2x2 per ROI
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32, 64]]
    cfg.MODEL.DA_HEADS.IMG_IN_FEATURES = ["res4"]
    return cfg


def tiny_fpn_cfg():
    """R18-FPN (64 channels), StandardROIHeads with a 2-FC box head of 64. Images <= 128x160."""
    cfg = _base_cfg()
    _tiny_resnet(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.DA_HEADS.IMG_IN_FEATURES = ["p3", "p4"]
    return cfg


def tiny_vgg_cfg():
    """VGG16 conv5 (stride 16) + StandardROIHeads with FastRCNNConvFCHead 2 x FC 64 (DA-Faster: 4096)."""
    cfg = _base_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_vgg16_backbone"
    cfg.MODEL.VGG.OUT_FEATURES = ["vgg_conv5"]
    cfg.MODEL.VGG.FREEZE_BLOCKS = 2
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32, 64]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.IN_FEATURES = ["vgg_conv5"]
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["vgg_conv5"]
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.DA_HEADS.IMG_IN_FEATURES = ["vgg_conv5"]
    return cfg


def enable_da(cfg, img=True, ins=True, cst_weight=0.1):
    """Switch the discriminators on (in place) and return cfg."""
    cfg.MODEL.DA_HEADS.IMG_ENABLED = img
    cfg.MODEL.DA_HEADS.INS_ENABLED = ins
    cfg.MODEL.DA_HEADS.CST_WEIGHT = cst_weight if (img and ins) else 0.0
    return cfg


def make_image_input(h, w, boxes=None, classes=None, seed=0):
    """One detectron2 input dict: "image" (3, h, w) float 0-255; "instances" when ``boxes`` is given
    (a list of XYXY boxes in pixels, possibly empty; ``classes`` default 0..)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, h, w, generator=g) * 255.0
    out = {"image": image, "height": h, "width": w}
    if boxes is not None:
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        if classes is None:
            classes = [i % 3 for i in range(len(boxes))]
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        out["instances"] = inst
    return out


def make_inputs(h=64, w=96, n_source=2, n_target=1, target_hw=None, empty_source=True):
    """A labelled source batch and an unlabelled target batch of tiny images.

    The last source image has no boxes when ``empty_source`` (d2 filters those by default; a DA model
    must still give every parameter a gradient). Target images default to a different size than source.
    """
    th, tw = target_hw or (h - 16, w + 16)
    source = []
    for i in range(n_source):
        if empty_source and i == n_source - 1 and n_source > 1:
            boxes = []
        else:
            boxes = [[4.0, 6.0, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, w - 3.0, h - 2.0]]
        source.append(make_image_input(h, w, boxes, seed=i))
    target = [make_image_input(th, tw, seed=100 + i) for i in range(n_target)]
    return source, target


# ------------------------------------------------------------------------------------------- trainer tests
def quick_cfg(data_dir, out_dir, *opts, prefix="toy", deterministic=False):
    """Quick R18-FPN cfg on a registered toy pair (96x128 images, 2 boxes each).

    ``deterministic``: every anchor / ROI is used (no random subsampling) and no dropout, so that runs with
    different RNG streams (1 vs 2 processes) compute the same losses.
    """
    src, tgt = register_toy_pair(data_dir, prefix=prefix)
    base = ["DATASETS.TRAIN", f"('{src}',)", "DATASETS.TRAIN_TARGET", f"('{tgt}',)", "DATASETS.TEST", "()",
            "MODEL.ROI_HEADS.NUM_CLASSES", "3", "OUTPUT_DIR", str(out_dir), "INPUT.MIN_SIZE_TRAIN", "(96,)",
            "INPUT.MIN_SIZE_TEST", "96", "INPUT.RANDOM_FLIP", "none", "SOLVER.MAX_ITER", "4",
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
            "MODEL.DA_HEADS.INS_TARGET_PROPOSALS", "8"]
    if deterministic:
        base += ["MODEL.RPN.BATCH_SIZE_PER_IMAGE", "100000", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "100000",
                 "MODEL.DA_HEADS.INS_DROPOUT", "0.0"]
    return setup_cfg(QUICK, base + list(opts))


# ------------------------------------------------------------------------------------------ the tool tests
def tiny_rcnn_cfg(num_classes=2):
    """GeneralizedRCNN, R18-FPN with 32 FPN channels, 2-FC box head of 32, ``num_classes`` classes, 48-96 px
    test images."""
    cfg = add_metaalign_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 32
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 30
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.INPUT.MIN_SIZE_TEST = 48
    cfg.INPUT.MAX_SIZE_TEST = 96
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATASETS.TEST = ()
    return cfg
