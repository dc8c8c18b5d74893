"""Model parts: importing this registers DomainAdaptiveRCNN (META_ARCH_REGISTRY), the DA and SWDA heads
(DA_HEAD_REGISTRY), the context ROI heads (ROI_HEADS_REGISTRY) and the VGG16 backbone (BACKBONE_REGISTRY)."""
from .. import compat

compat.apply()  # before any detectron2 import; without detectron2: ImportError saying how to get it

from .backbone import VGG16Backbone, build_vgg16_backbone
from .context_roi_heads import SWDA_CONTEXT_KEY, ContextRes5ROIHeads, ContextStandardROIHeads
from .discriminators import (
    DA_HEAD_REGISTRY,
    ImageDomainHead,
    InstanceDomainHead,
    build_img_da_head,
    build_ins_da_head,
)
from .grl import GradientReversal, GradientReversalFunction, grad_reverse
from .losses import (
    SOURCE_LABEL,
    TARGET_LABEL,
    consistency_loss,
    domain_bce,
    domain_focal,
    domain_least_squares,
    domain_softmax_focal,
)
from .meta_arch import (
    ALIGN_LOSS_KEYS,
    ALIGN_LOSS_PREFIX,
    SWDA_LOSS_KEYS,
    DomainAdaptiveRCNN,
    roi_box_feature_dim,
    roi_box_features,
    split_losses,
    strip_da_heads,
)
from .swda_heads import SWDA_CONTEXT_DIM, SWDAGlobalHead, SWDALocalHead, build_swda_global_head, build_swda_local_head

__all__ = [
    "ALIGN_LOSS_KEYS",
    "ALIGN_LOSS_PREFIX",
    "ContextRes5ROIHeads",
    "ContextStandardROIHeads",
    "DA_HEAD_REGISTRY",
    "DomainAdaptiveRCNN",
    "GradientReversal",
    "GradientReversalFunction",
    "ImageDomainHead",
    "InstanceDomainHead",
    "SOURCE_LABEL",
    "SWDA_CONTEXT_DIM",
    "SWDA_CONTEXT_KEY",
    "SWDA_LOSS_KEYS",
    "SWDAGlobalHead",
    "SWDALocalHead",
    "TARGET_LABEL",
    "VGG16Backbone",
    "build_img_da_head",
    "build_ins_da_head",
    "build_swda_global_head",
    "build_swda_local_head",
    "build_vgg16_backbone",
    "consistency_loss",
    "domain_bce",
    "domain_focal",
    "domain_least_squares",
    "domain_softmax_focal",
    "grad_reverse",
    "roi_box_feature_dim",
    "roi_box_features",
    "split_losses",
    "strip_da_heads",
]
