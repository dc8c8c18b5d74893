"""metaalign_det: unsupervised domain-adaptive object detection (DA-Faster / MetaAlign) for detectron2.

Where detectron2 is importable, importing this package applies :mod:`metaalign_det.compat` (before any
detectron2 import) and registers the project's meta-architecture, heads, backbones, datasets and evaluators.

Without detectron2 the package still imports, and so do its parts that do not need it: the MetaAlign step
(``metaalign_det.meta``, pure torch), ``metaalign_det.utils.io`` and ``metaalign_det.analysis.pad`` /
``.stats``. Everything else raises ImportError with one line saying how to install detectron2.
"""
import importlib.util

from . import compat

__version__ = "0.1.0"

# the parts that need detectron2, as attributes of this package
_NEEDS_DETECTRON2 = ("add_metaalign_config", "data", "evaluation", "modeling")


def _detectron2_importable():
    try:
        return importlib.util.find_spec("detectron2") is not None
    except (ImportError, ValueError):  # a finder refusing it, or sys.modules["detectron2"] = None
        return False


if _detectron2_importable():
    compat.apply()

    # data: the builtin datasets and the demo pair (reads no file); evaluation: DetectionAPEvaluator;
    # modeling: DomainAdaptiveRCNN, the DA heads, the VGG16 backbone -- each registers them on import
    from . import data, evaluation, modeling
    from .config import add_metaalign_config

    __all__ = ["add_metaalign_config", "compat", "data", "evaluation", "modeling"]
else:
    __all__ = ["compat"]

    def __getattr__(name):
        if name in _NEEDS_DETECTRON2:
            raise ImportError(compat.D2_MISSING_MESSAGE)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
