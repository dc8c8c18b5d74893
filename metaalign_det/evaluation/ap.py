"""Per-class average precision of box detections at one IoU threshold, in pure torch, vectorised.

Three conventions (``metric``):

* ``"coco101"`` -- what pycocotools reports as AP50 (and what AT / ALDI / MIC tables call "AP50"): per image
  and class the detections are sorted by score (stable) and cut to ``max_dets`` (100); each one, in turn, is
  matched greedily to the unmatched non-ignored ground truth (GT) with the highest IoU >= threshold (ties: the
  later GT), else to an ignored GT (crowd GT can absorb any number of detections); detections matched to an
  ignored GT are dropped; precision is made monotone and read at 101 recall points 0, 0.01, ..., 1.
* ``"voc07"`` / ``"voc12"`` -- the PASCAL VOC devkit rule (as in detectron2's ``PascalVOCDetectionEvaluator``):
  each detection takes the GT of its image and class with the highest IoU (ties: the earlier GT); if that IoU
  is > threshold (strictly) it is a true positive when the GT is new, a false positive when the GT was already
  taken by a higher-scored detection, and dropped when the GT is ignored; no ``max_dets`` cut. ``voc07`` averages
  the monotone precision at the 11 recalls ``np.arange(0, 1.1, 0.1)``, ``voc12`` takes the area under it.

Conventions shared by all three:

* IoU of XYXY boxes in absolute pixels *without* the VOC "+1": area = (x2 - x1) * (y2 - y1), as pycocotools.
  For a crowd GT the IoU is intersection / area(detection) (pycocotools' crowd rule), so a detection inside a
  crowd region is dropped rather than counted as a false positive.
* Ignored GT = crowd or difficult. They never count as misses; a difficult GT behaves like a pycocotools GT
  with ``ignore`` set (it absorbs one detection in ``coco101``, any number in the VOC rule, like the devkit).
* Order of equal scores: detections are ranked by score, then by image index, then by their position in the
  input tensors -- exactly pycocotools' order (per image stable sort, images concatenated in id order, then a
  stable mergesort), so ties give identical results.
* A class without non-ignored GT has AP ``nan`` (pycocotools: -1) and is left out of the mean.
* All arithmetic that decides a match or a precision value is float64.

The only Python loops: over chunks of detection/GT pairs and of classes (bounded, to cap memory), and the
rounds of the greedy ``coco101`` matching, each of which settles every detection whose choice can no longer
change (at least the best unsettled detection of every image and class) across all images and classes at once.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

__all__ = ["METRICS", "METRIC_SPECS", "MetricSpec", "APResult", "compute_ap", "default_max_dets"]

# pycocotools' recall thresholds, built the same way so the float64 values are bit-identical.
_COCO_REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
# The VOC devkit's 11 recall points (note 0.30000000000000004 etc.: kept on purpose, the devkit uses them).
_VOC07_REC_THRS = np.arange(0.0, 1.1, 0.1)

# Max (detection, GT) pairs whose IoU is computed at once, and max cells of a dense class x detection
# matrix: bound the peak memory to a few hundred MB whatever the dataset size.
_PAIR_CHUNK = 1 << 23
_DENSE_CHUNK = 1 << 24

_DET_STATE_FP, _DET_STATE_TP, _DET_STATE_IGNORED = 0, 1, 2


@dataclass
class APResult:
    """Per-class AP and counts. All tensors have shape [C] and live on the CPU.

    ap:             float64, fraction in [0, 1]; nan for a class without non-ignored GT.
    recall:         float64, the recall reached at the lowest score; nan for a class without GT.
    num_gt:         int64, non-ignored GT boxes.
    num_ignored_gt: int64, crowd or difficult GT boxes.
    num_dets:       int64, detections evaluated (after the ``max_dets`` cut, including dropped ones).
    """

    ap: torch.Tensor
    recall: torch.Tensor
    num_gt: torch.Tensor
    num_ignored_gt: torch.Tensor
    num_dets: torch.Tensor
    metric: str
    iou_threshold: float
    max_dets: Optional[int]

    def mean_ap(self) -> float:
        """Mean AP over the classes that have GT (fraction); nan when no class has any."""
        valid = ~torch.isnan(self.ap)
        return float(self.ap[valid].mean()) if bool(valid.any()) else float("nan")


def _lexsort(*keys: torch.Tensor) -> torch.Tensor:
    """Permutation sorting by keys[0], then keys[1], ... ascending; stable (like numpy.lexsort, reversed)."""
    order = torch.arange(keys[0].numel(), device=keys[0].device)
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def _segment_starts(sorted_ids: torch.Tensor) -> torch.Tensor:
    """For ids sorted ascending [N] -> [N] index of the first element of each element's run."""
    if sorted_ids.numel() == 0:
        return sorted_ids.new_zeros(0)
    _, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return torch.repeat_interleave(starts, counts)


def _candidate_pairs(d_box, d_group, g_box, g_group, g_crowd, threshold, strict):
    """All (det, GT) pairs of the same image and class whose IoU passes the threshold.

    d_box [D, 4] / g_box [M, 4] float64, d_group [D] / g_group [M] int64 (g_group sorted ascending).
    Returns det index [P], GT index [P], IoU [P] (float64), pairs in (det, GT) order.

    The IoU repeats pycocotools' ``bbIou`` (maskApi.c) operation by operation, so the float64 values are
    bit-identical: no "+1", zero without overlap, intersection / area(det) for a crowd GT.
    """
    dev = d_box.device
    lo = torch.searchsorted(g_group, d_group, right=False)
    hi = torch.searchsorted(g_group, d_group, right=True)
    n = hi - lo
    ends = torch.cumsum(n, 0)
    total = int(ends[-1]) if n.numel() else 0
    out_d, out_g, out_iou = [], [], []
    if total == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty, torch.zeros(0, dtype=torch.float64, device=dev)
    # chunk boundaries over detections so that each chunk expands to at most ~_PAIR_CHUNK pairs
    marks = torch.arange(_PAIR_CHUNK, max(total, _PAIR_CHUNK), _PAIR_CHUNK, device=dev)
    cuts = torch.searchsorted(ends, marks, right=True).tolist()
    bounds = [0] + sorted(set(int(c) for c in cuts)) + [d_group.numel()]
    # per-box columns and areas once; per pair only 1-D index_select gathers (much faster than
    # advanced indexing of [P, 4] rows on CPU)
    dx1, dy1, dx2, dy2 = (c.contiguous() for c in d_box.unbind(1))
    gx1, gy1, gx2, gy2 = (c.contiguous() for c in g_box.unbind(1))
    d_area, g_area = (dx2 - dx1) * (dy2 - dy1), (gx2 - gx1) * (gy2 - gy1)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a:
            continue
        n_c = n[a:b]
        det_idx = torch.repeat_interleave(torch.arange(a, b, device=dev), n_c)
        if det_idx.numel() == 0:
            continue
        first = torch.cumsum(n_c, 0) - n_c  # offset of each detection's first pair in this chunk
        within = torch.arange(det_idx.numel(), device=dev) - torch.repeat_interleave(first, n_c)
        gt_idx = lo.index_select(0, det_idx) + within
        d = [t.index_select(0, det_idx) for t in (dx1, dy1, dx2, dy2, d_area)]
        g = [t.index_select(0, gt_idx) for t in (gx1, gy1, gx2, gy2, g_area, g_crowd)]
        iw = torch.minimum(d[2], g[2]) - torch.maximum(d[0], g[0])
        ih = torch.minimum(d[3], g[3]) - torch.maximum(d[1], g[1])
        inter = iw * ih
        iou = inter / torch.where(g[5], d[4], d[4] + g[4] - inter)
        overlap = (iw > 0) & (ih > 0)
        keep = overlap & (iou > threshold if strict else iou >= threshold)  # nan (0/0 area) never passes
        sel = torch.nonzero(keep).squeeze(1)
        out_d.append(det_idx.index_select(0, sel))
        out_g.append(gt_idx.index_select(0, sel))
        out_iou.append(iou.index_select(0, sel))
    return torch.cat(out_d), torch.cat(out_g), torch.cat(out_iou)


def _match_greedy_coco(num_dets, p_det, p_gt, p_iou, g_ignored, g_crowd):
    """pycocotools' greedy matching; returns the state of every detection [D] (FP / TP / IGNORED).

    Detection indices are in (image, class, score-rank) order, so within an image and class a smaller index
    is matched first. Each detection prefers a non-ignored GT, then the highest IoU, then the later GT.
    A round settles every detection whose preferred available GT is a crowd region (never used up) or is
    wanted by no better-ranked unsettled detection: its choice can no longer change, so settling it now gives
    the sequential result. The best unsettled detection of each image and class always settles, so the
    rounds are at most the number of competing detections of the most crowded image and class.
    """
    dev = p_det.device
    state = torch.full((num_dets,), _DET_STATE_FP, dtype=torch.int64, device=dev)
    if p_det.numel() == 0:
        return state
    order = _lexsort(p_det, g_ignored[p_gt].to(torch.int64), -p_iou, -p_gt)
    p_det, p_gt = p_det[order], p_gt[order]
    num_gt = g_ignored.numel()
    resolved = torch.ones(num_dets, dtype=torch.bool, device=dev)
    resolved[p_det] = False  # detections without a candidate stay FP
    taken = torch.zeros(num_gt, dtype=torch.bool, device=dev)
    match = torch.full((num_dets,), -1, dtype=torch.int64, device=dev)
    while p_det.numel():
        pos = torch.arange(p_det.numel(), device=dev)
        first = torch.full((num_dets,), p_det.numel(), dtype=torch.int64, device=dev)
        first.scatter_reduce_(0, p_det, pos, reduce="amin")
        best_rank = torch.full((num_gt,), num_dets, dtype=torch.int64, device=dev)
        best_rank.scatter_reduce_(0, p_gt, p_det, reduce="amin")
        dets = torch.unique_consecutive(p_det)  # the unsettled detections that still have a candidate
        choice = p_gt[first[dets]]
        settle = g_crowd[choice] | (best_rank[choice] == dets)
        dets, choice = dets[settle], choice[settle]
        match[dets] = choice
        resolved[dets] = True
        taken[choice[~g_crowd[choice]]] = True
        keep = ~resolved[p_det] & (g_crowd[p_gt] | ~taken[p_gt])
        p_det, p_gt = p_det[keep], p_gt[keep]  # unsettled detections left without candidate stay FP
    matched = match >= 0
    state[matched] = torch.where(g_ignored[match[matched]], _DET_STATE_IGNORED, _DET_STATE_TP)
    return state


def _match_voc(num_dets, p_det, p_gt, p_iou, g_ignored, g_crowd=None):
    """The VOC devkit rule; returns the state of every detection [D] (FP / TP / IGNORED).

    ``g_crowd`` is not needed: a crowd GT is an ignored GT here (its crowd IoU is in ``p_iou`` already).

    Each detection's best GT does not depend on other detections, so this is one pass of segment ops:
    best GT per detection, then the first (best-ranked) detection per non-ignored GT is the true positive.
    """
    dev = p_det.device
    state = torch.full((num_dets,), _DET_STATE_FP, dtype=torch.int64, device=dev)
    if p_det.numel() == 0:
        return state
    order = _lexsort(p_det, -p_iou, p_gt)
    p_det, p_gt = p_det[order], p_gt[order]
    first = torch.full((num_dets,), p_det.numel(), dtype=torch.int64, device=dev)
    first.scatter_reduce_(0, p_det, torch.arange(p_det.numel(), device=dev), reduce="amin")
    dets = torch.unique_consecutive(p_det)
    best = p_gt[first[dets]]
    ignored = g_ignored[best]
    state[dets[ignored]] = _DET_STATE_IGNORED
    dets, best = dets[~ignored], best[~ignored]
    first_det = torch.full((g_ignored.numel(),), num_dets, dtype=torch.int64, device=dev)
    first_det.scatter_reduce_(0, best, dets, reduce="amin")
    state[dets[first_det[best] == dets]] = _DET_STATE_TP
    return state


def _ap_from_sorted(tp_sorted, cls_sorted, num_gt, spec):
    """AP per class from detections sorted by (class, score desc, image, position).

    tp_sorted [K] bool (dropped detections already removed), cls_sorted [K] int64, num_gt [C] int64.
    ``spec``: the metric's :class:`MetricSpec`. Returns ap [C], recall [C] float64 (nan where num_gt == 0).
    """
    dev = tp_sorted.device
    C = num_gt.numel()
    f64 = torch.float64
    ap = torch.zeros(C, dtype=f64, device=dev)
    recall = torch.zeros(C, dtype=f64, device=dev)
    counts = torch.bincount(cls_sorted, minlength=C)
    col = torch.arange(cls_sorted.numel(), device=dev) - _segment_starts(cls_sorted)
    thrs = None if spec.recall_points is None else torch.as_tensor(spec.recall_points, dtype=f64, device=dev)
    # chunk classes so that (classes in chunk) x (max detections of a class in it) stays bounded
    counts_cpu = counts.cpu().tolist()
    c0 = 0
    while c0 < C:
        c1, width = c0 + 1, max(counts_cpu[c0], 1)
        while c1 < C and (c1 + 1 - c0) * max(width, counts_cpu[c1]) <= _DENSE_CHUNK:
            width = max(width, counts_cpu[c1])
            c1 += 1
        k = c1 - c0
        sel = (cls_sorted >= c0) & (cls_sorted < c1)
        rows, cols = cls_sorted[sel] - c0, col[sel]
        tp = torch.zeros(k, width, dtype=f64, device=dev)
        valid = torch.zeros(k, width, dtype=torch.bool, device=dev)
        tp[rows, cols] = tp_sorted[sel].to(f64)
        valid[rows, cols] = True
        tpc = torch.cumsum(tp, 1)
        fpc = torch.cumsum(valid.to(f64) - tp, 1)
        npos = num_gt[c0:c1].to(f64)[:, None]
        rc = tpc / npos
        pr = spec.precision(tpc, fpc)
        pr = torch.where(valid, pr, torch.zeros_like(pr))
        rc = torch.where(valid, rc, torch.full_like(rc, float("inf")))
        env = torch.flip(torch.cummax(torch.flip(pr, [1]), 1).values, [1])  # monotone precision envelope
        n_c = counts[c0:c1]
        if thrs is not None:
            idx = torch.searchsorted(rc.contiguous(), thrs.expand(k, -1).contiguous(), right=False)
            q = torch.gather(env, 1, idx.clamp(max=width - 1))
            q = torch.where(idx < n_c[:, None], q, torch.zeros_like(q))
            ap[c0:c1] = q.sum(1) / thrs.numel()
        else:  # no recall points (voc12): area under the envelope, summed over the recall steps
            prev = torch.cat([torch.zeros(k, 1, dtype=f64, device=dev), rc[:, :-1]], 1)
            step = torch.where(valid, rc - prev, torch.zeros_like(rc))
            ap[c0:c1] = (step * env).sum(1)
        last = torch.gather(tpc, 1, (n_c - 1).clamp(min=0)[:, None])[:, 0]
        recall[c0:c1] = torch.where(n_c > 0, last / npos[:, 0], torch.zeros_like(last))
        c0 = c1
    no_gt = num_gt == 0
    ap[no_gt] = float("nan")
    recall[no_gt] = float("nan")
    return ap, recall


def _precision_coco(tpc, fpc):
    return tpc / (fpc + tpc + np.spacing(1))  # pycocotools' expression, same evaluation order


def _precision_voc(tpc, fpc):
    return tpc / torch.clamp(tpc + fpc, min=np.finfo(np.float64).eps)  # the VOC devkit's


@dataclass(frozen=True)
class MetricSpec:
    """One AP convention: how detections are matched, and how the precision-recall curve becomes AP.

    max_dets:        default cut of detections per image and class (None: no cut).
    strict_iou:      a match needs IoU > threshold (VOC devkit) instead of IoU >= threshold (pycocotools).
    max_iou:         the threshold is capped at this value (pycocotools caps it at 1 - 1e-10).
    match:           ``(num_dets, p_det, p_gt, p_iou, g_ignored, g_crowd) -> state [D]`` (FP / TP / IGNORED).
    precision:       ``(tp cumsum, fp cumsum) -> precision``, both [k, width] float64.
    recall_points:   AP = mean of the precision envelope at these recalls; None = area under the envelope.
    is_coco_ap50:    at IoU 0.5 this is what pycocotools reports as AP50 (the evaluator cross-checks it).
    protocol:        one sentence for reports; ``{iou}`` and ``{max_dets}`` are filled in.
    """

    max_dets: Optional[int]
    strict_iou: bool
    max_iou: float
    match: Callable
    precision: Callable
    recall_points: Optional[np.ndarray]
    is_coco_ap50: bool
    protocol: str


_VOC_RULE = ("VOC devkit rule: each detection takes its highest-IoU GT, IoU > {iou:.2f}, duplicates are false "
             "positives, ")

# metric name -> its convention (the module docstring describes them); the only place a metric is defined
METRIC_SPECS = {
    "coco101": MetricSpec(
        max_dets=100, strict_iou=False, max_iou=1 - 1e-10, match=_match_greedy_coco, precision=_precision_coco,
        recall_points=_COCO_REC_THRS, is_coco_ap50=True,
        protocol="pycocotools rule: greedy matching, IoU >= {iou:.2f}, max {max_dets} detections per image and "
        "class, 101-point interpolated precision",
    ),
    "voc07": MetricSpec(
        max_dets=None, strict_iou=True, max_iou=1.0, match=_match_voc, precision=_precision_voc,
        recall_points=_VOC07_REC_THRS, is_coco_ap50=False,
        protocol=_VOC_RULE + "11-point interpolated precision (VOC2007)",
    ),
    "voc12": MetricSpec(
        max_dets=None, strict_iou=True, max_iou=1.0, match=_match_voc, precision=_precision_voc,
        recall_points=None, is_coco_ap50=False,
        protocol=_VOC_RULE + "area under the interpolated precision-recall curve (VOC2010+)",
    ),
}
METRICS = tuple(METRIC_SPECS)


def default_max_dets(metric: str) -> Optional[int]:
    """pycocotools' maxDets (100 per image and class) for ``coco101``; no cut for the VOC rule."""
    return METRIC_SPECS[metric].max_dets


def _check_inputs(name, tensors, n, shapes):
    for key, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"compute_ap: {name}_{key} must be a torch.Tensor, got {type(t).__name__}")
        want = shapes[key]
        ok = t.shape == (n, 4) if want == "box" else t.shape == (n,)
        if not ok:
            expected = f"[{n}, 4]" if want == "box" else f"[{n}]"
            raise ValueError(f"compute_ap: {name}_{key} has shape {list(t.shape)}, expected {expected}")


def compute_ap(
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
    metric: str = "coco101",
    iou_threshold: float = 0.5,
    max_dets: Optional[int] = -1,
) -> APResult:
    """Per-class AP of detections against ground truth, at one IoU threshold.

    Args:
        det_boxes:   [N, 4] XYXY boxes in absolute pixels (any float dtype; computed in float64).
        det_scores:  [N] confidence; higher is better.
        det_classes: [N] int class index in [0, num_classes).
        det_images:  [N] int image index >= 0. Ties in score are broken by image index, then by position in
                     these tensors (pycocotools' order when image indices follow the image ids).
        gt_boxes:    [M, 4] XYXY absolute pixels.  gt_classes / gt_images: [M] as for detections.
        gt_crowd:    [M] bool, crowd regions (ignored, crowd IoU); None = none.
        gt_difficult:[M] bool, difficult objects (ignored); None = none.
        num_classes: C.
        metric:      "coco101", "voc07" or "voc12" (see the module docstring).
        iou_threshold: IoU a match needs: >= for coco101 (pycocotools), > for the VOC rule (devkit).
        max_dets:    keep the top-k detections per image and class (-1: 100 for coco101, no cut for VOC;
                     None: no cut).
    All tensors must be on one device; the work runs there. Returns an :class:`APResult` (CPU tensors).
    """
    if metric not in METRIC_SPECS:
        raise ValueError(f"compute_ap: metric must be one of {', '.join(METRICS)}; got {metric!r}")
    spec = METRIC_SPECS[metric]
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"compute_ap: iou_threshold must be in (0, 1], got {iou_threshold}")
    if max_dets == -1:
        max_dets = spec.max_dets
    N, M = det_boxes.shape[0], gt_boxes.shape[0]
    shapes = {"boxes": "box", "scores": "vec", "classes": "vec", "images": "vec", "crowd": "vec", "difficult": "vec"}
    _check_inputs("det", dict(boxes=det_boxes, scores=det_scores, classes=det_classes, images=det_images), N, shapes)
    gts = dict(boxes=gt_boxes, classes=gt_classes, images=gt_images, crowd=gt_crowd, difficult=gt_difficult)
    _check_inputs("gt", gts, M, shapes)
    dev = det_boxes.device  # everything is moved here (a no-op when the caller kept one device)
    C = int(num_classes)
    det_scores = det_scores.to(dev)
    det_classes, det_images = det_classes.to(dev, torch.int64), det_images.to(dev, torch.int64)
    gt_boxes = gt_boxes.to(dev)
    gt_classes, gt_images = gt_classes.to(dev, torch.int64), gt_images.to(dev, torch.int64)
    for name, t in (("det_classes", det_classes), ("gt_classes", gt_classes)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= C):
            raise ValueError(f"compute_ap: {name} must be in [0, {C}); got values in [{int(t.min())}, {int(t.max())}]")
    for name, t in (("det_images", det_images), ("gt_images", gt_images)):
        if t.numel() and int(t.min()) < 0:
            raise ValueError(f"compute_ap: {name} must be >= 0")
    if N and bool(torch.isnan(det_scores).any()):
        raise ValueError("compute_ap: det_scores contains NaN")

    f64 = torch.float64
    gt_crowd = torch.zeros(M, dtype=torch.bool, device=dev) if gt_crowd is None else gt_crowd.to(dev, torch.bool)
    gt_difficult = (
        torch.zeros(M, dtype=torch.bool, device=dev) if gt_difficult is None else gt_difficult.to(dev, torch.bool)
    )
    gt_ignored = gt_crowd | gt_difficult
    num_gt = torch.bincount(gt_classes[~gt_ignored], minlength=C)
    num_ignored = torch.bincount(gt_classes[gt_ignored], minlength=C)

    # detections in (image, class) groups, each sorted by score desc then position; cut to max_dets
    det_group = det_images * C + det_classes
    order = _lexsort(det_group, -det_scores.to(f64))
    det_group = det_group[order]
    if max_dets is not None and N:
        rank = torch.arange(N, device=dev) - _segment_starts(det_group)
        order, det_group = order[rank < max_dets], det_group[rank < max_dets]
    d_box = det_boxes[order].to(f64)

    # GT grouped the same way, original order kept inside a group (it decides IoU ties)
    gt_group = gt_images * C + gt_classes
    g_order = torch.sort(gt_group, stable=True).indices
    g_group, g_box = gt_group[g_order], gt_boxes[g_order].to(f64)
    g_crowd, g_ignored = gt_crowd[g_order], gt_ignored[g_order]

    D = order.numel()
    thr = min(float(iou_threshold), spec.max_iou)
    p_det, p_gt, p_iou = _candidate_pairs(d_box, det_group, g_box, g_group, g_crowd, thr, strict=spec.strict_iou)
    state = spec.match(D, p_det, p_gt, p_iou, g_ignored, g_crowd)

    # precision/recall per class: rank kept detections by (class, score desc, image, position)
    kept_cls = det_classes[order]
    num_dets = torch.bincount(kept_cls, minlength=C)
    scored = state != _DET_STATE_IGNORED
    idx = order[scored]
    tie_key = det_images[idx] * (N + 1) + idx
    o = _lexsort(det_classes[idx], -det_scores[idx].to(f64), tie_key)
    tp_sorted = (state[scored] == _DET_STATE_TP)[o]
    ap, recall = _ap_from_sorted(tp_sorted, det_classes[idx][o], num_gt, spec)
    return APResult(
        ap=ap.cpu(),
        recall=recall.cpu(),
        num_gt=num_gt.cpu(),
        num_ignored_gt=num_ignored.cpu(),
        num_dets=num_dets.cpu(),
        metric=metric,
        iou_threshold=float(iou_threshold),
        max_dets=max_dets,
    )
