"""Sim10k (Johnson-Roberson et al., "Driving in the Matrix", 2017) as the car-only source of Sim10k -> Cityscapes.

Tree (``<sim>`` = ``$DETECTRON2_DATASETS/sim10k``), Pascal-VOC layout::

    <sim>/VOC2012/JPEGImages/<id>.jpg              10,000 GTA-V frames, 1914x1052
    <sim>/VOC2012/Annotations/<id>.xml             VOC XML: car, motorbike, person boxes
    <sim>/VOC2012/ImageSets/Main/trainval.txt      the ids used (all 10,000)

Only ``car`` boxes are kept (the DA literature's protocol); ``motorbike`` / ``person`` boxes are dropped
with one INFO line, not an error. Parsing is :mod:`.voc`'s (not detectron2's ``load_voc_instances``, which
needs ``np.str``).
"""
import os
from typing import List

from .voc import load_voc_records

__all__ = ["SIM10K_ARCHIVES", "load_sim10k_car"]

# https://fcav.engin.umich.edu/projects/driving-in-the-matrix
SIM10K_ARCHIVES = {"images": "repro_10k_images.tgz", "annotations": "repro_10k_annotations.tgz"}
_LIST_HINT = (f" (it comes with {SIM10K_ARCHIVES['annotations']}; if your copy lacks it, write it from "
              f"Annotations/*.xml with `python tools/prepare_datasets.py sim10k --make-list`)")


def load_sim10k_car(voc_root: str, split: str = "trainval") -> List[dict]:
    """Detectron2 dataset dicts of Sim10k ``split`` with the car boxes alone (``category_id`` 0)."""
    if not os.path.isdir(voc_root):
        raise FileNotFoundError(
            f"Sim10k root {voc_root} does not exist: extract {SIM10K_ARCHIVES['images']} and "
            f"{SIM10K_ARCHIVES['annotations']} so that it holds JPEGImages/ and Annotations/ (datasets/README.md)"
        )
    return load_voc_records(voc_root, split, classes=("car",), drop_other_classes=True,
                            context=f"Sim10k {split} under {voc_root}", list_hint=_LIST_HINT)
