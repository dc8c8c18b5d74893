"""Dataset loaders and the builtin registrations.

Importing this registers every builtin name (``builtin.py``) and reads no file: loaders list trees,
convert annotations (cached) and check images only when ``DatasetCatalog.get(name)`` is called.
"""
from . import builtin  # noqa: F401  (registers the builtin datasets)
from .builtin import datasets_root, register_all_builtin
from .cityscapes_foggy import CITYSCAPES_THING_CLASSES, FOGGY_BETAS, load_cityscapes_detection
from .coco_cache import load_coco_records
from .sim2real import ensure_sim2real, load_sim2real
from .sim2real_render import SIM2REAL_CLASSES
from .sim10k import load_sim10k_car
from .synthetic import ensure_synthetic_pair, load_synthetic
from .synthetic_render import SYNTHETIC_CLASSES
from .voc import load_voc_records

__all__ = [
    "datasets_root",
    "register_all_builtin",
    "CITYSCAPES_THING_CLASSES",
    "FOGGY_BETAS",
    "SYNTHETIC_CLASSES",
    "SIM2REAL_CLASSES",
    "load_cityscapes_detection",
    "load_sim10k_car",
    "load_voc_records",
    "load_coco_records",
    "load_synthetic",
    "ensure_synthetic_pair",
    "load_sim2real",
    "ensure_sim2real",
]
