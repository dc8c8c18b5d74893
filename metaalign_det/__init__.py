"""metaalign_det: unsupervised domain-adaptive object detection (DA-Faster / MetaAlign) for detectron2.

Importing this package applies :mod:`metaalign_det.compat` (before any detectron2 import) and registers
the project's meta-architecture, heads, backbones, datasets and evaluators.
"""
from . import compat

compat.apply()

from . import modeling  # noqa: E402  (registers DomainAdaptiveRCNN, DA heads, the VGG16 backbone)
from . import evaluation  # noqa: E402  (DetectionAPEvaluator)
from . import data  # noqa: E402  (registers the builtin datasets and the demo pair; reads no file)
from .config import add_metaalign_config  # noqa: E402

__version__ = "0.1.0"
__all__ = ["add_metaalign_config", "compat", "data", "evaluation", "modeling"]
