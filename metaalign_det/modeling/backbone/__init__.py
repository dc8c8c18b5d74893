"""Backbones registered in detectron2's BACKBONE_REGISTRY on import."""
from .vgg import VGG16_OUTPUTS, VGG16Backbone, build_vgg16_backbone

__all__ = ["VGG16Backbone", "build_vgg16_backbone", "VGG16_OUTPUTS"]
