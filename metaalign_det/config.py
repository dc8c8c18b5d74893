"""``add_metaalign_config(cfg)``: every key this project adds to detectron2's config, one comment each.

Everything adaptive is OFF by default: a config that sets none of these keys trains and evaluates plain
Faster R-CNN exactly as detectron2 would.
"""
from . import compat

compat.apply()  # before any detectron2 import; without detectron2: ImportError saying how to get it

from detectron2.config import CfgNode as CN  # noqa: E402

from .options import EvalOptions, MetaOptions, TeacherOptions  # noqa: E402  (the groups' defaults and rules)

__all__ = ["add_metaalign_config", "alignment_heads_enabled"]


def alignment_heads_enabled(cfg) -> bool:
    """True when any domain discriminator is on (DA-Faster's image / instance heads or SWDA's local / global
    heads): the model then needs a target batch and returns alignment losses."""
    da, sw = cfg.MODEL.DA_HEADS, cfg.MODEL.SWDA
    return bool(da.IMG_ENABLED or da.INS_ENABLED or sw.LOCAL_ENABLED or sw.GLOBAL_ENABLED)


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
    # The domain pair to train on: a pair manifest's path (registered here), or the name of a registered pair.
    # Fills TRAIN (<pair>_source), TRAIN_TARGET (<pair>_target) and TEST (<pair>_test when the pair has one,
    # else none): configs/user_pair/ need only this and MODEL.ROI_HEADS.NUM_CLASSES. "" = off.
    _C.DATASETS.PAIR = ""
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

    # ---- Strong-Weak alignment (SWDA, Saito et al. 2019; docs/model.md "SWDA") --------------------------
    _C.MODEL.SWDA = CN()
    # Local ("strong") discriminator: 1x1 convs in->256->128->1, sigmoid, least-squares loss -> loss_da_local.
    _C.MODEL.SWDA.LOCAL_ENABLED = False
    # Backbone output it reads, the stride-4 map (SWDA: ResNet layer1 = "res2", add it to RESNETS.OUT_FEATURES
    # for C4; FPN: "p2"; VGG16: "vgg_conv3_2", SWDA's split after relu3_2).
    _C.MODEL.SWDA.LOCAL_IN_FEATURE = "res2"
    # Name in DA_HEAD_REGISTRY of the local head.
    _C.MODEL.SWDA.LOCAL_HEAD_NAME = "SWDALocalHead"
    # Gradient-reversal weight lambda in front of the local head (SWDA: 1.0).
    _C.MODEL.SWDA.LOCAL_GRL_WEIGHT = 1.0
    # Weight of loss_da_local (SWDA: 1; its eta 0.1 for Sim10k).
    _C.MODEL.SWDA.LOCAL_LOSS_WEIGHT = 1.0
    # Std of the zero-mean normal init of the local head's convs (SWDA: 0.01).
    _C.MODEL.SWDA.LOCAL_INIT_STD = 0.01
    # Append the local head's 128-d context vector to every ROI's box feature (SWDA --lc: on).
    _C.MODEL.SWDA.LOCAL_CONTEXT = False
    # Global ("weak") discriminator: 3 x (3x3 stride-2 conv, BN, ReLU, dropout), pool, FC 128->2, focal loss.
    _C.MODEL.SWDA.GLOBAL_ENABLED = False
    # Backbone output it reads, the stride-16 map (SWDA: ResNet layer3 = "res4"; FPN: "p4"; VGG16: "vgg_conv5").
    _C.MODEL.SWDA.GLOBAL_IN_FEATURE = "res4"
    # Name in DA_HEAD_REGISTRY of the global head.
    _C.MODEL.SWDA.GLOBAL_HEAD_NAME = "SWDAGlobalHead"
    # Gradient-reversal weight lambda in front of the global head (SWDA: 1.0).
    _C.MODEL.SWDA.GLOBAL_GRL_WEIGHT = 1.0
    # Weight of loss_da_global (SWDA: 1; its eta 0.1 for Sim10k).
    _C.MODEL.SWDA.GLOBAL_LOSS_WEIGHT = 1.0
    # Gamma of the global head's softmax focal loss (SWDA: 5).
    _C.MODEL.SWDA.GLOBAL_FOCAL_GAMMA = 5.0
    # Dropout after each conv block of the global head (SWDA: 0.5).
    _C.MODEL.SWDA.GLOBAL_DROPOUT = 0.5
    # Append the global head's 128-d context vector to every ROI's box feature (SWDA --gc: on).
    _C.MODEL.SWDA.GLOBAL_CONTEXT = False

    # ---- VGG16 backbone (the DA literature's standard) --------------------------------------------
    _C.MODEL.VGG = CN()
    # Local file with torchvision-layout VGG16 weights ("features.N.weight", ...); "" = random init.
    _C.MODEL.VGG.WEIGHTS = ""
    # Number of leading conv blocks (1..5) kept frozen, as DA-Faster freezes conv1-conv2 (2); 0 = none.
    _C.MODEL.VGG.FREEZE_BLOCKS = 2
    # Output feature names: "vgg_conv5" (stride 16, no last max-pool) and any of "vgg_conv3_2" (relu3_2, stride 4,
    # 256 ch: SWDA's local map), "vgg_conv3" (relu3_3), "vgg_conv4" (stride 8).
    _C.MODEL.VGG.OUT_FEATURES = ["vgg_conv5"]

    # ---- MetaAlign step ---------------------------------------------------------------------------
    # The META / TEACHER / TEST.AP_* defaults are those of their option records (metaalign_det/options.py,
    # which also validates them); the comments say what each key does and the default's value.
    _META, _TEACHER, _EVAL = MetaOptions(), TeacherOptions(), EvalOptions()
    _C.META = CN()
    # "none" (default) = plain joint DA step; "first_order" = official update; "second_order" = exact
    # meta-gradient.
    _C.META.MODE = _META.mode
    # "align_first" (default; paper: inner step on L_align), "det_first" (roles swapped), "alternate" (official
    # code: det_first on even iterations -- it starts with the detection loss as meta-train -- align_first on odd).
    _C.META.DIRECTION = _META.direction
    # Inner step size alpha = INNER_LR_SCALE x current learning rate (official meta_lr; detection: 10, the default).
    _C.META.INNER_LR_SCALE = _META.inner_lr_scale
    # Regexes over parameter names that get fast weights; empty (default) = every trainable parameter.
    _C.META.PARAMS = list(_META.params)
    # Hessian-vector product for second order: "auto" (default: double backward, else finite difference),
    # "double_backward", "finite_difference".
    _C.META.HVP = _META.hvp
    # Relative step of the central finite-difference HVP (eps = FD_EPS * ||theta|| / ||v||; default 1e-3).
    _C.META.FD_EPS = _META.fd_eps
    # In MODE "none", also log meta/grad_cos every N (default 20) iterations (one extra backward then; 0 = never).
    # The meta modes log it every step for free.
    _C.META.JOINT_GRAD_COS_PERIOD = _META.joint_grad_cos_period

    # Iterations between metric writes (console, metrics.json, TensorBoard); detectron2 hard-codes 20.
    _C.SOLVER.LOG_PERIOD = 20

    # ---- teacher-student adaptation (docs/teacher.md) -------------------------------------------------
    # Strong view = photometric changes of the weak (mapper: resize + flip) view, geometry untouched.
    _C.INPUT.STRONG_AUG = CN()
    # Source views of the supervised loss: "weak" (the mapper's), "strong" (its strong view instead) or "both"
    # (weak + strong copies of every source image, as Adaptive Teacher; twice the source images per step).
    _C.INPUT.STRONG_AUG.SOURCE = "weak"
    # The student's pseudo-label loss sees the strong view of the target images (needs TEACHER.ENABLED).
    _C.INPUT.STRONG_AUG.TARGET = False
    # Probability of colour jitter (brightness, contrast, saturation, hue in a random order).
    _C.INPUT.STRONG_AUG.COLOR_JITTER_PROB = 0.8
    # Brightness factor drawn from [1 - x, 1 + x].
    _C.INPUT.STRONG_AUG.BRIGHTNESS = 0.4
    # Contrast factor drawn from [1 - x, 1 + x].
    _C.INPUT.STRONG_AUG.CONTRAST = 0.4
    # Saturation factor drawn from [1 - x, 1 + x].
    _C.INPUT.STRONG_AUG.SATURATION = 0.4
    # Hue shift drawn from [-x, x] (fraction of the hue circle, <= 0.5).
    _C.INPUT.STRONG_AUG.HUE = 0.1
    # Probability of converting to grayscale (kept as 3 channels).
    _C.INPUT.STRONG_AUG.GRAYSCALE_PROB = 0.2
    # Probability of a Gaussian blur; its sigma (pixels) drawn uniformly from BLUR_SIGMA.
    _C.INPUT.STRONG_AUG.BLUR_PROB = 0.5
    # (min, max) sigma of the Gaussian blur, in pixels of the mapped image.
    _C.INPUT.STRONG_AUG.BLUR_SIGMA = (0.1, 2.0)
    # One random-erasing (cutout) pass per entry, each applied with that probability (Adaptive Teacher).
    _C.INPUT.STRONG_AUG.ERASE_PROBS = (0.7, 0.5, 0.3)
    # (min, max) erased area as a fraction of the image.
    _C.INPUT.STRONG_AUG.ERASE_SCALE = (0.02, 0.2)
    # (min, max) aspect ratio (height / width) of an erased rectangle, drawn log-uniformly.
    _C.INPUT.STRONG_AUG.ERASE_RATIO = (0.3, 3.3)

    # Exponential moving average of the model's weights (parameters and floating buffers).
    _C.MODEL.EMA = CN()
    # Keep an EMA, update it after every optimizer step, evaluate and checkpoint it ("ema" entry).
    _C.MODEL.EMA.ENABLED = False
    # ema = DECAY * ema + (1 - DECAY) * student, every step (Adaptive Teacher's keep rate: 0.9996).
    _C.MODEL.EMA.DECAY = 0.9996

    # Mean teacher: the EMA labels the weak target view, the student learns them on the strong view.
    _C.TEACHER = CN()
    # Turn the teacher on (needs MODEL.EMA.ENABLED and DATASETS.TRAIN_TARGET).
    _C.TEACHER.ENABLED = _TEACHER.enabled
    # Source-only supervised iterations (no alignment, no pseudo-labels) before the teacher starts; 0 =
    # start at once (e.g. from a source-only MODEL.WEIGHTS).
    _C.TEACHER.BURN_IN_ITERS = _TEACHER.burn_in_iters
    # Teacher at the end of burn-in: "student" (a copy of the student; Adaptive Teacher) or "ema" (keep the
    # EMA accumulated during burn-in).
    _C.TEACHER.INIT = _TEACHER.init
    # Teacher detections (per-class NMS as in inference) scoring at least this become pseudo-labels.
    _C.TEACHER.SCORE_THRESH = _TEACHER.score_thresh
    # Detection losses the student takes on pseudo-labelled target images, logged as loss_pseudo_*;
    # Adaptive Teacher: the classification terms only (box regression from pseudo-boxes is unreliable).
    _C.TEACHER.LOSSES = _TEACHER.losses
    # Weight of every pseudo-label loss (Adaptive Teacher's unsupervised loss weight).
    _C.TEACHER.LOSS_WEIGHT = _TEACHER.loss_weight
    # Log teacher/agreement (student vs teacher on the weak target view) every N iterations; 0 = never.
    _C.TEACHER.MONITOR_PERIOD = _TEACHER.monitor_period
    # Log pseudo-label precision/recall against the target datasets' labels (fetched from DatasetCatalog,
    # monitoring only: never fed to the model); needs labelled target sets.
    _C.TEACHER.MONITOR_GT = _TEACHER.monitor_gt

    # ---- mixed precision ----------------------------------------------------------------------------
    # Autocast dtype when SOLVER.AMP.ENABLED: "float16" (with a GradScaler) or "bfloat16" (no scaler; CPU too).
    _C.SOLVER.AMP.DTYPE = "float16"

    # ---- evaluation -------------------------------------------------------------------------------
    # AP convention of the project's evaluator: "coco101" (pycocotools AP50), "voc07" (11-point), "voc12".
    _C.TEST.AP_METRIC = _EVAL.ap_metric
    # IoU threshold of that AP.
    _C.TEST.AP_IOU = _EVAL.ap_iou
    # Also report COCO AP@[.5:.95] through pycocotools (slower; for users who want the COCO numbers).
    _C.TEST.AP_COCO = _EVAL.ap_coco
    return cfg
