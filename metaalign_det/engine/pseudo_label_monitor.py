"""Monitoring of the teacher's pseudo-labels (``teacher/*`` metrics, never used for training): how many per image
and their mean score every step; the student-teacher agreement every ``TEACHER.MONITOR_PERIOD`` steps; with
``TEACHER.MONITOR_GT`` their precision and recall at IoU 0.5 against the target labels, which are read from
``DatasetCatalog`` here -- the training loader never carries them."""
import contextlib
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances, pairwise_iou

from .pseudo_labels import pseudo_label

__all__ = ["count_matches", "TargetLabelIndex", "PseudoLabelMonitor"]

logger = logging.getLogger(__name__)


def count_matches(boxes_a: torch.Tensor, classes_a: torch.Tensor, boxes_b: torch.Tensor, classes_b: torch.Tensor,
                  scores_a: Optional[torch.Tensor] = None, iou_thresh: float = 0.5) -> int:
    """Number of one-to-one matches between detections ``a`` ((Na, 4) XYXY, (Na,) classes) and ``b``: greedy in
    decreasing ``scores_a`` (or given order), each ``a`` taking the unmatched ``b`` of its class with the
    highest IoU if that IoU >= ``iou_thresh`` (the AP50 matching rule)."""
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return 0
    iou = pairwise_iou(Boxes(boxes_a.float().cpu()), Boxes(boxes_b.float().cpu()))
    iou[classes_a.cpu()[:, None] != classes_b.cpu()[None, :]] = -1.0
    order = torch.argsort(scores_a.cpu(), descending=True).tolist() if scores_a is not None else range(len(boxes_a))
    used = torch.zeros(len(boxes_b), dtype=torch.bool)
    matched = 0
    for i in order:
        row = iou[i].masked_fill(used, -1.0)
        j = int(row.argmax())
        if row[j] >= iou_thresh:
            used[j] = True
            matched += 1
    return matched


class TargetLabelIndex:
    """Target labels for monitoring only, read from ``DatasetCatalog`` (not from the training loader, which
    strips them) on first use, by ``file_name``; crowd regions are left out."""

    def __init__(self, dataset_names: Sequence[str]):
        self.dataset_names = list(dataset_names)
        self._index: Optional[Dict[str, Tuple[np.ndarray, np.ndarray]]] = None

    def _build(self):
        index, labelled = {}, False
        for name in self.dataset_names:
            for d in DatasetCatalog.get(name):
                anns = d.get("annotations")
                if anns is None:
                    continue
                labelled = True
                anns = [a for a in anns if not a.get("iscrowd", 0)]
                boxes = np.array([BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
                                 dtype=np.float32).reshape(-1, 4)
                classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
                index[d["file_name"]] = (boxes, classes)
        if not labelled:
            logger.warning("TEACHER.MONITOR_GT: the target datasets %s carry no labels; no precision/recall",
                           self.dataset_names)
        self._index = index

    def lookup(self, file_name: str, transforms) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(boxes (N, 4) XYXY in the mapped frame, classes (N,)) of one image, or None if it has no labels."""
        if self._index is None:
            self._build()
        entry = self._index.get(file_name)
        if entry is None:
            return None
        boxes, classes = entry
        if len(boxes) and transforms is not None:
            boxes = transforms.apply_box(boxes.copy())
        return torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4), torch.as_tensor(classes)


def _dice(matched: int, n_a: int, n_b: int) -> float:
    return 2.0 * matched / (n_a + n_b) if n_a + n_b else float("nan")


class PseudoLabelMonitor:
    """The ``teacher/*`` metrics of one step (monitoring only; nothing here is trained on).

    Args:
        score_thresh: the pseudo-label threshold (the student's detections for the agreement use it too).
        period: ``teacher/agreement`` every ``period`` steps (0: never); it runs the student's inference.
        labels: a :class:`TargetLabelIndex` for ``teacher/pseudo_precision`` / ``pseudo_recall``, or None.
    """

    def __init__(self, score_thresh: float, period: int, labels: Optional[TargetLabelIndex] = None) -> None:
        self.score_thresh, self.period, self.labels = float(score_thresh), int(period), labels

    def __call__(self, model, iteration: int, target: List[dict], pseudo: List[Instances],
                 autocast_ctx: Callable = contextlib.nullcontext) -> Dict[str, Union[float, torch.Tensor]]:
        # Values the step has on the host already stay floats (the counts: the pseudo-labels' selection read
        # them); the mean score stays a device tensor, read with the step's other metrics on a log step
        # (engine/step_metrics.py). The label audit and the agreement need host reads.
        counts = [len(p) for p in pseudo]
        m: Dict[str, Union[float, torch.Tensor]] = {
            "teacher/pseudo_per_image": float(np.mean(counts)) if counts else 0.0}
        if sum(counts):
            m["teacher/pseudo_score"] = torch.cat([p.scores for p in pseudo]).mean()
        if self.labels is not None:
            tp = n_gt = 0
            n_pred = 0
            for d, p in zip(target, pseudo):
                gt = self.labels.lookup(d["file_name"], d.get("transforms"))
                if gt is None:
                    continue
                n_pred += len(p)
                n_gt += len(gt[0])
                tp += count_matches(p.gt_boxes.tensor, p.gt_classes, gt[0], gt[1], p.scores)
            m["teacher/pseudo_precision"] = tp / n_pred if n_pred else float("nan")
            m["teacher/pseudo_recall"] = tp / n_gt if n_gt else float("nan")
        if self.period > 0 and iteration % self.period == 0:
            was_training = model.training
            model.eval()
            try:
                student = pseudo_label(model, target, self.score_thresh, autocast_ctx)
            finally:
                model.train(was_training)
            matched = sum(count_matches(p.gt_boxes.tensor, p.gt_classes, s.gt_boxes.tensor, s.gt_classes, p.scores)
                          for p, s in zip(pseudo, student))
            m["teacher/agreement"] = _dice(matched, sum(counts), sum(len(s) for s in student))
        return m

