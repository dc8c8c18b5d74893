"""pycocotools on the evaluator's tensors: COCO AP@[.5:.95] for users who want it, and a cross-check of the
torch ``coco101`` AP50 (pycocotools is the reference; it is slow: Python loops per image and class).

Same inputs as :func:`metaalign_det.evaluation.ap.compute_ap`. Mapping to pycocotools: image index i -> image
id i + 1 (so pycocotools' sorted id order is the image index order and ties in score resolve identically),
class c -> category id c + 1, boxes XYXY -> XYWH in float64, crowd -> ``iscrowd``. A difficult GT is given
area -1: pycocotools then ignores it under every area range (its ``ignore`` field is overwritten by
``iscrowd``, so this is the only way to mark a non-crowd GT ignored).
"""
import contextlib
import io
from typing import Dict, Optional

import numpy as np
import torch

__all__ = ["pycocotools_ap"]


def _to_np(t, dtype):
    return t.detach().to("cpu").numpy().astype(dtype)


def pycocotools_ap(
    det_boxes: torch.Tensor,
    det_scores: torch.Tensor,
    det_classes: torch.Tensor,
    det_images: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_classes: torch.Tensor,
    gt_images: torch.Tensor,
    gt_crowd: Optional[torch.Tensor] = None,
    gt_difficult: Optional[torch.Tensor] = None,
    *,
    num_classes: int,
    num_images: Optional[int] = None,
) -> Dict[str, object]:
    """Run pycocotools' bbox COCOeval (evaluate + accumulate + summarize) with its default parameters.

    Tensors as in ``compute_ap`` (boxes [N, 4] / [M, 4] XYXY absolute pixels). ``num_images``: images
    evaluated (default: 1 + the largest image index); images without GT or detections still count.
    Returns, in percent (nan where pycocotools has no value): "AP", "AP50", "AP75", "APs", "APm", "APl"
    (floats) and "per_class_AP", "per_class_AP50" (numpy float64 arrays of shape [num_classes]).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    C = int(num_classes)
    gb = _to_np(gt_boxes, np.float64).reshape(-1, 4)
    gc = _to_np(gt_classes, np.int64)
    gi = _to_np(gt_images, np.int64)
    M = gb.shape[0]
    crowd = np.zeros(M, bool) if gt_crowd is None else _to_np(gt_crowd, bool)
    difficult = np.zeros(M, bool) if gt_difficult is None else _to_np(gt_difficult, bool)
    db = _to_np(det_boxes, np.float64).reshape(-1, 4)
    ds = _to_np(det_scores, np.float64)
    dc = _to_np(det_classes, np.int64)
    di = _to_np(det_images, np.int64)
    if num_images is None:
        num_images = int(max(gi.max(initial=-1), di.max(initial=-1))) + 1

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    anns = []
    for j in range(M):
        box = xywh(gb[j])
        area = -1.0 if difficult[j] and not crowd[j] else box[2] * box[3]
        anns.append(
            dict(id=j + 1, image_id=int(gi[j]) + 1, category_id=int(gc[j]) + 1, bbox=box, area=area,
                 iscrowd=int(crowd[j]))
        )
    gt = COCO()
    gt.dataset = dict(
        images=[dict(id=i + 1) for i in range(num_images)],
        categories=[dict(id=c + 1, name=str(c)) for c in range(C)],
        annotations=anns,
    )
    nan = float("nan")
    per_ap, per_ap50 = np.full(C, nan), np.full(C, nan)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on every call
        gt.createIndex()
        if db.shape[0] == 0:  # loadRes cannot take an empty list: every class with GT scores 0
            has_gt = np.bincount(gc[~(crowd | difficult)], minlength=C) > 0
            per_ap[has_gt], per_ap50[has_gt] = 0.0, 0.0
            summary = {k: (0.0 if has_gt.any() else nan) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
            return dict(summary, per_class_AP=per_ap, per_class_AP50=per_ap50)
        dets = [
            dict(image_id=int(di[k]) + 1, category_id=int(dc[k]) + 1, bbox=xywh(db[k]), score=float(ds[k]))
            for k in range(db.shape[0])
        ]
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [T, R, K, A, M]: IoU thresholds, recalls, classes, areas, maxDets
    for k in range(C):
        p = precision[:, :, k, 0, -1]
        if (p > -1).any():
            per_ap[k] = 100.0 * p[p > -1].mean()
        p50 = precision[0, :, k, 0, -1]
        if (p50 > -1).any():
            per_ap50[k] = 100.0 * p50[p50 > -1].mean()
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    summary = {key: (100.0 * float(v) if v > -1 else nan) for key, v in zip(keys, ev.stats[:6])}
    return dict(summary, per_class_AP=per_ap, per_class_AP50=per_ap50)
