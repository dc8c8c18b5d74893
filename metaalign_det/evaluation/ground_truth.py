"""Ground truth of a registered dataset as flat tensors, in the evaluator's image order."""
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.structures import BoxMode

__all__ = ["GroundTruth", "image_key", "ground_truth_tensors", "evaluation_order"]


class GroundTruth:
    """Flat GT tensors on one device (M = boxes of the evaluated images).

    boxes [M, 4] float64 XYXY absolute pixels (float64: XYWH -> XYXY stays exact, as in pycocotools);
    classes [M] int64 contiguous ids; images [M] int64 index into the evaluated image order;
    crowd [M] bool (``iscrowd``); difficult [M] bool (``difficult``).
    """

    def __init__(self, boxes, classes, images, crowd, difficult):
        self.boxes, self.classes, self.images = boxes, classes, images
        self.crowd, self.difficult = crowd, difficult


def image_key(record: dict):
    """How an image is identified: its ``image_id``, else its ``file_name`` (the test loader passes both)."""
    if "image_id" in record:
        return record["image_id"]
    if "file_name" in record:
        return record["file_name"]
    raise KeyError("a dataset record / model input has neither 'image_id' nor 'file_name'")


def evaluation_order(keys: Sequence) -> List:
    """Image order of the evaluation (it breaks ties in score): sorted ids, as pycocotools sorts image ids;
    the given order when the ids cannot be compared (mixed types)."""
    try:
        return sorted(keys)
    except TypeError:
        return list(keys)


def ground_truth_tensors(
    dataset_name: str, records_by_key: Dict, keys: Sequence, num_classes: int, device
) -> GroundTruth:
    """GT of the images ``keys`` (in that order: index i = keys[i]) from their dataset records.

    Reads each record's ``annotations``: ``bbox`` with ``bbox_mode`` (absolute modes), ``category_id``
    (contiguous, in [0, num_classes)), optional ``iscrowd`` and ``difficult``. Bad records raise one
    ValueError naming the dataset, the image and the field.
    """
    boxes, modes, classes, images, crowd, difficult = [], [], [], [], [], []
    for i, key in enumerate(keys):
        for ann in records_by_key[key].get("annotations", ()):
            where = f"dataset '{dataset_name}', image {key!r}"
            if "bbox" not in ann or "category_id" not in ann:
                raise ValueError(f"{where}: an annotation lacks 'bbox' or 'category_id'")
            cat = int(ann["category_id"])
            if not 0 <= cat < num_classes:
                raise ValueError(
                    f"{where}: category_id {cat} is not in [0, {num_classes}) (metadata thing_classes has "
                    f"{num_classes} names; the evaluator expects contiguous ids)"
                )
            boxes.append(ann["bbox"])
            modes.append(int(ann.get("bbox_mode", BoxMode.XYWH_ABS)))
            classes.append(cat)
            images.append(i)
            crowd.append(bool(ann.get("iscrowd", 0)))
            difficult.append(bool(ann.get("difficult", 0)))
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    modes_arr = np.asarray(modes, dtype=np.int64)
    for mode in np.unique(modes_arr):  # one vectorised conversion per box mode
        sel = modes_arr == mode
        if BoxMode(int(mode)) not in (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS):
            raise ValueError(
                f"dataset '{dataset_name}': bbox_mode {BoxMode(int(mode)).name} is not supported by the "
                f"evaluator (expected XYXY_ABS or XYWH_ABS)"
            )
        arr[sel] = BoxMode.convert(arr[sel], BoxMode(int(mode)), BoxMode.XYXY_ABS)

    def t(x, dtype):
        return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)

    return GroundTruth(
        boxes=t(arr, torch.float64).reshape(-1, 4),
        classes=t(classes, torch.int64).reshape(-1),
        images=t(images, torch.int64).reshape(-1),
        crowd=t(crowd, torch.bool).reshape(-1),
        difficult=t(difficult, torch.bool).reshape(-1),
    )
