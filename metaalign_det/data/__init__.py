"""Datasets of metaalign_det: builtin registrations and domain-pair manifests.

Importing this registers every builtin dataset name (``datasets/builtin.py``) without reading any file.
"""
from .. import compat

compat.apply()  # before any detectron2 import; without detectron2: ImportError saying how to get it

from . import datasets  # noqa: F401  (registers the builtin datasets; reads no file)
from .datasets import datasets_root, register_all_builtin
from .mapper import SafeImageMapper, UnreadableImageError
from .pairs import (
    load_manifest,
    pair_dataset_names,
    register_domain_pair,
    register_pair_manifests,
    registered_pairs,
    unregister_domain_pair,
)

__all__ = [
    "datasets_root",
    "register_all_builtin",
    "load_manifest",
    "pair_dataset_names",
    "register_domain_pair",
    "register_pair_manifests",
    "registered_pairs",
    "unregister_domain_pair",
    "SafeImageMapper",
    "UnreadableImageError",
]
