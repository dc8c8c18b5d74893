"""``add_metaalign_config(cfg)``: every key this project adds to detectron2's config, one comment each.

Everything adaptive is OFF by default: a config that sets none of these keys trains and evaluates plain
Faster R-CNN exactly as detectron2 would.
"""
from . import compat

compat.apply()  # before any detectron2 import; without detectron2: ImportError saying how to get it

from detectron2.config import CfgNode as CN  # noqa: E402

__all__ = ["add_metaalign_config"]


def add_metaalign_config(cfg):
    """Add the metaalign_det keys to ``cfg`` in place (idempotent) and return it."""
    if hasattr(cfg, "META"):
        return cfg
    _C = cfg

    # ---- data ------------------------------------------------------------------------------------
    # DATASETS.TRAIN is the labelled *source*; DATASETS.TEST is evaluated (usually the target val).
    # Unlabelled *target* training sets; their annotations, if any, are never read in training.
    _C.DATASETS.TRAIN_TARGET = ()
    # YAML/JSON domain-pair manifests registered before any loader is built (see README "Register a pair").
    _C.DATASETS.PAIR_MANIFESTS = ()
    # Target images per step, over all processes (SOLVER.IMS_PER_BATCH counts the source images).
    _C.SOLVER.TARGET_IMS_PER_BATCH = 2

    # ---- domain-alignment heads (DA-Faster R-CNN style) -------------------------------------------
    _C.MODEL.DA_HEADS = CN()
    # Image-level discriminator: per-location domain logits over backbone feature map(s).
    _C.MODEL.DA_HEADS.IMG_ENABLED = False
    # Backbone outputs it reads: "res4" (C4), any of "p2".."p6" (FPN; several = one shared head), "vgg_conv5".
    _C.MODEL.DA_HEADS.IMG_IN_FEATURES = ["res4"]
    # Name in DA_HEAD_REGISTRY of the image-level head.
    _C.MODEL.DA_HEADS.IMG_HEAD_NAME = "ImageDomainHead"
    # Hidden channels of the image-level head's 1x1 convs.
    _C.MODEL.DA_HEADS.IMG_HIDDEN_DIM = 512
    # Std of the normal init of the image-level head's convs (DA-Faster: 0.001; short schedules need more).
    _C.MODEL.DA_HEADS.IMG_INIT_STD = 0.001
    # Gradient-reversal weight lambda for the image-level features (DA-Faster: 0.1).
    _C.MODEL.DA_HEADS.IMG_GRL_WEIGHT = 0.1
    # Weight of loss_da_img in the total loss.
    _C.MODEL.DA_HEADS.IMG_LOSS_WEIGHT = 1.0
    # "bce" (DA-Faster) or "focal" (SWDA-style global alignment).
    _C.MODEL.DA_HEADS.IMG_LOSS = "bce"
    # Focal-loss gamma when IMG_LOSS == "focal" (SWDA: 5).
    _C.MODEL.DA_HEADS.IMG_FOCAL_GAMMA = 5.0
    # Instance-level discriminator: MLP on the box-head feature of each ROI.
    _C.MODEL.DA_HEADS.INS_ENABLED = False
    # Name in DA_HEAD_REGISTRY of the instance-level head.
    _C.MODEL.DA_HEADS.INS_HEAD_NAME = "InstanceDomainHead"
    # Hidden width of the instance-level MLP.
    _C.MODEL.DA_HEADS.INS_HIDDEN_DIM = 1024
    # Gradient-reversal weight lambda for the ROI features (DA-Faster: 0.1).
    _C.MODEL.DA_HEADS.INS_GRL_WEIGHT = 0.1
    # Weight of loss_da_ins in the total loss.
    _C.MODEL.DA_HEADS.INS_LOSS_WEIGHT = 1.0
    # Dropout after each hidden layer of the instance-level MLP (DA-Faster: 0.5).
    _C.MODEL.DA_HEADS.INS_DROPOUT = 0.5
    # Top-N RPN proposals per target image fed to the instance-level head (source uses the sampled ROIs).
    _C.MODEL.DA_HEADS.INS_TARGET_PROPOSALS = 128
    # Weight of the image/instance consistency loss loss_da_cst (DA-Faster: 0.1; 0 = off).
    _C.MODEL.DA_HEADS.CST_WEIGHT = 0.0

    # ---- VGG16 backbone (the DA literature's standard) --------------------------------------------
    _C.MODEL.VGG = CN()
    # Local file with torchvision-layout VGG16 weights ("features.N.weight", ...); "" = random init.
    _C.MODEL.VGG.WEIGHTS = ""
    # Number of leading conv blocks (1..5) kept frozen, as DA-Faster freezes conv1-conv2 (2); 0 = none.
    _C.MODEL.VGG.FREEZE_BLOCKS = 2
    # Output feature names: "vgg_conv4" (stride 8) and/or "vgg_conv5" (stride 16, no last max-pool).
    _C.MODEL.VGG.OUT_FEATURES = ["vgg_conv5"]

    # ---- MetaAlign step ---------------------------------------------------------------------------
    _C.META = CN()
    # "none" = plain joint DA step; "first_order" = official update; "second_order" = exact meta-gradient.
    _C.META.MODE = "none"
    # "align_first" (paper: inner step on L_align), "det_first" (roles swapped), "alternate" (official code:
    # det_first on even iterations -- it starts with the detection loss as meta-train -- align_first on odd).
    _C.META.DIRECTION = "align_first"
    # Inner step size alpha = INNER_LR_SCALE x current learning rate (official meta_lr; detection: 10).
    _C.META.INNER_LR_SCALE = 10.0
    # Regexes over parameter names that get fast weights; empty = every trainable parameter.
    _C.META.PARAMS = []
    # Hessian-vector product for second order: "auto" (double backward, else finite difference),
    # "double_backward", "finite_difference".
    _C.META.HVP = "auto"
    # Relative step of the central finite-difference HVP (eps = FD_EPS * ||theta|| / ||v||).
    _C.META.FD_EPS = 1e-3
    # In MODE "none", also log meta/grad_cos every N iterations (costs one extra backward then; 0 = never).
    # The meta modes log it every step for free.
    _C.META.JOINT_GRAD_COS_PERIOD = 20

    # Iterations between metric writes (console, metrics.json, TensorBoard); detectron2 hard-codes 20.
    _C.SOLVER.LOG_PERIOD = 20

    # ---- mixed precision ----------------------------------------------------------------------------
    # Autocast dtype when SOLVER.AMP.ENABLED: "float16" (with a GradScaler) or "bfloat16" (no scaler; CPU too).
    _C.SOLVER.AMP.DTYPE = "float16"

    # ---- evaluation -------------------------------------------------------------------------------
    # AP convention of the project's evaluator: "coco101" (pycocotools AP50), "voc07" (11-point), "voc12".
    _C.TEST.AP_METRIC = "coco101"
    # IoU threshold of that AP.
    _C.TEST.AP_IOU = 0.5
    # Also report COCO AP@[.5:.95] through pycocotools (slower; for users who want the COCO numbers).
    _C.TEST.AP_COCO = False
    return cfg
