# metaalign_det first: it applies compat (detectron2._C placeholder) before any detectron2 import here.
import metaalign_det  # noqa: F401
import metaalign_det.modeling  # noqa: F401  (registers DomainAdaptiveRCNN, the DA heads, VGG16)
