"""compute_ap against pycocotools (coco101) and a plain float64 VOC devkit re-implementation (voc07/voc12)."""
import math

import numpy as np
import pytest
import torch

import metaalign_det  # noqa: F401  (compat before detectron2)
from metaalign_det.evaluation import ap as ap_module
from metaalign_det.evaluation.ap import compute_ap
from metaalign_det.evaluation.coco_reference import pycocotools_ap


# --------------------------------------------------------------------------------------------- fixtures
def random_case(seed, num_images=10, num_classes=4, max_gt=10, max_det=40, score_levels=6):
    """Clustered GT (so detections compete for GT), jittered detections, duplicates, false positives.

    Built-in corner cases: the last class never has GT, class 1 never has detections for odd seeds,
    every 4th image has neither GT nor detections, ~15% crowd and ~10% difficult GT, scores quantised to
    ``score_levels`` values (many ties, also across images), seed % 3 == 0 has > 100 detections on some
    image and class (pycocotools' maxDets cut).
    """
    g = torch.Generator().manual_seed(seed)
    C = num_classes
    gb, gc, gi, gcr, gdf, db, ds, dc, di = ([] for _ in range(9))
    for i in range(num_images):
        if i % 4 == 3:
            continue
        n = int(torch.randint(0, max_gt + 1, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 40
        wh = torch.rand(n, 2, generator=g) * 30 + 8
        boxes = torch.cat([xy, xy + wh], 1)
        cls = torch.randint(0, C - 1, (n,), generator=g)
        gb.append(boxes), gc.append(cls), gi.append(torch.full((n,), i))
        gcr.append(torch.rand(n, generator=g) < 0.15), gdf.append(torch.rand(n, generator=g) < 0.10)
        m = int(torch.randint(0, max_det + 1, (1,), generator=g)) + (120 if seed % 3 == 0 and i == 0 else 0)
        src = torch.randint(0, max(n, 1), (m,), generator=g)
        if n:
            b = boxes[src] + torch.randn(m, 4, generator=g) * 3.0
            c = torch.where(torch.rand(m, generator=g) < 0.85, cls[src], torch.randint(0, C, (m,), generator=g))
        else:
            b, c = torch.rand(m, 4, generator=g) * 60, torch.randint(0, C, (m,), generator=g)
        if seed % 2 == 1:
            c = torch.where(c == 1, torch.zeros_like(c), c)
        if seed % 3 == 0 and i == 0:
            c = torch.zeros_like(c)  # one image/class group of > 100 detections
        b = torch.cat([torch.minimum(b[:, :2], b[:, 2:]), torch.maximum(b[:, :2], b[:, 2:])], 1)
        db.append(b), dc.append(c), di.append(torch.full((m,), i))
        ds.append(torch.randint(1, score_levels + 1, (m,), generator=g).float() / score_levels)
    det = dict(det_boxes=torch.cat(db).float(), det_scores=torch.cat(ds), det_classes=torch.cat(dc),
               det_images=torch.cat(di))
    gt = dict(gt_boxes=torch.cat(gb).float(), gt_classes=torch.cat(gc), gt_images=torch.cat(gi),
              gt_crowd=torch.cat(gcr), gt_difficult=torch.cat(gdf))
    return det, gt, num_images, C


# ------------------------------------------------------------------------------ float64 VOC reference
def _iou_plain(d, gbox, crowd):
    iw = min(d[2], gbox[2]) - max(d[0], gbox[0])
    ih = min(d[3], gbox[3]) - max(d[1], gbox[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    da = (d[2] - d[0]) * (d[3] - d[1])
    ga = (gbox[2] - gbox[0]) * (gbox[3] - gbox[1])
    return inter / (da if crowd else da + ga - inter)


def voc_reference(det, gt, num_classes, metric, thr=0.5):
    """The VOC devkit's voc_eval / voc_ap, written plainly (float64 Python), ties ordered by (image, position)."""
    db = det["det_boxes"].double().tolist()
    ds = det["det_scores"].double().tolist()
    dc, di = det["det_classes"].tolist(), det["det_images"].tolist()
    gb = gt["gt_boxes"].double().tolist()
    gc, gi = gt["gt_classes"].tolist(), gt["gt_images"].tolist()
    crowd, diff = gt["gt_crowd"].tolist(), gt["gt_difficult"].tolist()
    aps = []
    for c in range(num_classes):
        objs = {}
        npos = 0
        for j in range(len(gb)):
            if gc[j] != c:
                continue
            ignored = bool(crowd[j] or diff[j])
            objs.setdefault(gi[j], []).append(dict(box=gb[j], crowd=bool(crowd[j]), ignored=ignored, used=False))
            npos += 0 if ignored else 1
        dets = [(-ds[k], di[k], k) for k in range(len(db)) if dc[k] == c]
        dets.sort()  # score desc, then image, then position
        tp, fp = [], []
        for _, img, k in dets:
            best, jbest = -math.inf, -1
            for j, o in enumerate(objs.get(img, [])):
                iou = _iou_plain(db[k], o["box"], o["crowd"])
                if iou > best:
                    best, jbest = iou, j
            if best > thr:
                o = objs[img][jbest]
                if o["ignored"]:
                    continue
                if not o["used"]:
                    o["used"] = True
                    tp.append(1.0), fp.append(0.0)
                else:
                    tp.append(0.0), fp.append(1.0)
            else:
                tp.append(0.0), fp.append(1.0)
        if npos == 0:
            aps.append(float("nan"))
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / npos
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if metric == "voc07":
            ap = 0.0
            for t in np.arange(0.0, 1.1, 0.1):
                p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
                ap += p / 11.0
        else:
            mrec = np.concatenate(([0.0], rec, [1.0]))
            mpre = np.concatenate(([0.0], prec, [0.0]))
            for i in range(mpre.size - 1, 0, -1):
                mpre[i - 1] = max(mpre[i - 1], mpre[i])
            i = np.where(mrec[1:] != mrec[:-1])[0]
            ap = float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
        aps.append(ap)
    return np.array(aps) * 100.0


def _assert_same(ours, ref, tol):
    ours = np.asarray(ours, dtype=np.float64)
    assert np.array_equal(np.isnan(ours), np.isnan(ref)), (ours, ref)
    np.testing.assert_allclose(np.nan_to_num(ours), np.nan_to_num(ref), rtol=0, atol=tol)


# ---------------------------------------------------------------------------------- random vs references
SEEDS = list(range(8))
# the GPU path runs the same comparisons wherever CUDA exists (the CPU ones always run)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def on(device, *dicts):
    return [{k: v.to(device) for k, v in d.items()} for d in dicts]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
def test_coco101_equals_pycocotools(seed, device):
    det, gt, n_img, C = random_case(seed)
    d_det, d_gt = on(device, det, gt)
    ours = compute_ap(**d_det, **d_gt, num_classes=C, metric="coco101").ap.numpy() * 100
    ref = pycocotools_ap(**det, **gt, num_classes=C, num_images=n_img)["per_class_AP50"]
    _assert_same(ours, ref, 1e-6)
    assert np.isnan(ours[C - 1])  # the class without GT is undefined, not 0
    assert ((ours[:-1] > 0) & (ours[:-1] < 100)).any()  # non-trivial values were compared


def test_coco101_equals_pycocotools_at_other_iou_and_max_dets():
    """IoU 0.75 (pycocotools' per-class AP75) on a case with a > 100 detection image/class group."""
    det, gt, n_img, C = random_case(3)
    ours = compute_ap(**det, **gt, num_classes=C, metric="coco101", iou_threshold=0.75).ap.numpy() * 100
    precision = _pycocotools_precision(det, gt, n_img, C)  # [T, R, K, A, M], iouThrs .50:.05:.95
    ref = np.array([_mean_valid(precision[5, :, k, 0, -1]) for k in range(C)])
    _assert_same(ours, ref, 1e-6)
    kept = compute_ap(**det, **gt, num_classes=C, metric="coco101").num_dets.sum()
    assert kept < det["det_scores"].numel()  # the maxDets cut was exercised


def _mean_valid(p):
    p = p[p > -1]
    return 100.0 * p.mean() if p.size else float("nan")


def _pycocotools_precision(det, gt, n_img, C):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

    gbox = gt["gt_boxes"].double().tolist()
    anns = [dict(id=j + 1, image_id=int(gt["gt_images"][j]) + 1, category_id=int(gt["gt_classes"][j]) + 1,
                 bbox=xywh(b), area=(-1.0 if gt["gt_difficult"][j] and not gt["gt_crowd"][j]
                                     else (b[2] - b[0]) * (b[3] - b[1])),
                 iscrowd=int(gt["gt_crowd"][j])) for j, b in enumerate(gbox)]
    coco = COCO()
    coco.dataset = dict(images=[dict(id=i + 1) for i in range(n_img)],
                        categories=[dict(id=c + 1) for c in range(C)], annotations=anns)
    dets = [dict(image_id=int(det["det_images"][k]) + 1, category_id=int(det["det_classes"][k]) + 1,
                 bbox=xywh(b), score=float(det["det_scores"][k]))
            for k, b in enumerate(det["det_boxes"].double().tolist())]
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["voc07", "voc12"])
@pytest.mark.parametrize("seed", SEEDS)
def test_voc_equals_plain_reference(metric, seed, device):
    det, gt, n_img, C = random_case(seed)
    d_det, d_gt = on(device, det, gt)
    ours = compute_ap(**d_det, **d_gt, num_classes=C, metric=metric).ap.numpy() * 100
    ref = voc_reference(det, gt, C, metric)
    _assert_same(ours, ref, 1e-9)
    assert ((ours[:-1] > 0) & (ours[:-1] < 100)).any()


def test_matching_rules_differ_on_competing_detections():
    """The greedy (COCO) and VOC matchings disagree when a duplicate could take a second GT: the tests above
    can tell them apart."""
    gt = dict(gt_boxes=torch.tensor([[0.0, 0, 10, 10], [3.0, 0, 13, 10]]), gt_classes=torch.tensor([0, 0]),
              gt_images=torch.tensor([0, 0]))
    # det 0: IoU 1.0 with GT0 (0.54 with GT1). det 1: IoU 0.82 with GT0, 0.67 with GT1: VOC sends it to its
    # best GT0 (a duplicate, FP); COCO skips the taken GT0 and matches GT1 (TP).
    det = dict(det_boxes=torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10]]), det_scores=torch.tensor([0.9, 0.8]),
               det_classes=torch.tensor([0, 0]), det_images=torch.tensor([0, 0]))
    coco = compute_ap(**det, **gt, num_classes=1, metric="coco101").ap.item()
    voc = compute_ap(**det, **gt, num_classes=1, metric="voc12").ap.item()
    assert coco == pytest.approx(1.0, abs=1e-12)  # both GT found
    assert voc == pytest.approx(0.5, abs=1e-12)  # one TP then one duplicate FP: recall stops at 0.5


def test_detection_order_across_images_does_not_matter():
    """Only (image index, position inside an image) breaks ties, not how images interleave in the input."""
    det, gt, _, C = random_case(4)
    img_key = torch.randperm(int(det["det_images"].max()) + 1, generator=torch.Generator().manual_seed(0))
    perm = torch.sort(img_key[det["det_images"]], stable=True).indices
    mixed = {k: v[perm] for k, v in det.items()}
    assert not torch.equal(mixed["det_images"], det["det_images"])
    for metric in ("coco101", "voc07", "voc12"):
        a = compute_ap(**det, **gt, num_classes=C, metric=metric).ap
        b = compute_ap(**mixed, **gt, num_classes=C, metric=metric).ap
        assert torch.equal(torch.nan_to_num(a, 7.0), torch.nan_to_num(b, 7.0))


@pytest.mark.parametrize("device", DEVICES)
def test_chunked_computation_matches(monkeypatch, device):
    """Tiny pair / dense chunks (many Python-level chunks) give bit-identical AP."""
    det, gt = on(device, *random_case(6)[:2])
    C = 4
    full = {m: compute_ap(**det, **gt, num_classes=C, metric=m).ap for m in ("coco101", "voc07", "voc12")}
    monkeypatch.setattr(ap_module, "_PAIR_CHUNK", 7)
    monkeypatch.setattr(ap_module, "_DENSE_CHUNK", 5)
    for m, ref in full.items():
        got = compute_ap(**det, **gt, num_classes=C, metric=m).ap
        assert torch.equal(torch.nan_to_num(got, 7.0), torch.nan_to_num(ref, 7.0)), m


# ------------------------------------------------------------------------------------- hand-made cases
def _grid_gt(n):
    boxes = torch.tensor([[20.0 * i, 0.0, 20.0 * i + 10, 10.0] for i in range(n)])
    return boxes


@pytest.mark.parametrize("metric", ["coco101", "voc07", "voc12"])
def test_perfect_detector_is_100(metric):
    gt_boxes = _grid_gt(6)
    gt = dict(gt_boxes=gt_boxes, gt_classes=torch.tensor([0, 1, 0, 1, 0, 1]),
              gt_images=torch.tensor([0, 0, 1, 1, 2, 2]))
    det = dict(det_boxes=gt_boxes.clone(), det_scores=torch.linspace(0.9, 0.4, 6),
               det_classes=gt["gt_classes"].clone(), det_images=gt["gt_images"].clone())
    r = compute_ap(**det, **gt, num_classes=3, metric=metric)
    assert r.ap[:2].tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    assert math.isnan(r.ap[2].item())
    assert r.mean_ap() == pytest.approx(1.0, abs=1e-12)
    assert r.num_gt.tolist() == [3, 3, 0] and r.num_dets.tolist() == [3, 3, 0]


@pytest.mark.parametrize("metric", ["coco101", "voc07", "voc12"])
def test_all_false_positives_is_0(metric):
    gt = dict(gt_boxes=_grid_gt(3), gt_classes=torch.zeros(3, dtype=torch.long), gt_images=torch.tensor([0, 1, 1]))
    det = dict(det_boxes=_grid_gt(3) + torch.tensor([0.0, 50.0, 0.0, 50.0]), det_scores=torch.tensor([0.9, 0.8, 0.7]),
               det_classes=torch.zeros(3, dtype=torch.long), det_images=torch.tensor([0, 1, 1]))
    r = compute_ap(**det, **gt, num_classes=1, metric=metric)
    assert r.ap.item() == 0.0 and r.recall.item() == 0.0


# one image, 4 GT, detections ranked TP FP TP FP TP: precision 1, 1/2, 2/3, 1/2, 3/5; recall .25 .25 .5 .5 .75
KNOWN_PR_AP = {
    # 11-point: t=0,.1,.2 -> 1; t=.3,.4,.5 -> 2/3; t=.6,.7 -> 3/5; t=.8,.9,1 -> 0
    "voc07": (3 * 1 + 3 * 2 / 3 + 2 * 3 / 5) / 11,
    # area: .25 * 1 + .25 * 2/3 + .25 * 3/5
    "voc12": 0.25 * (1 + 2 / 3 + 3 / 5),
    # 101 points: r in [0,.25] (26 points) -> 1; (.25,.5] (25) -> 2/3; (.5,.75] (25) -> 3/5; rest 0
    "coco101": (26 * 1 + 25 * 2 / 3 + 25 * 3 / 5) / 101,
}


@pytest.mark.parametrize("metric", sorted(KNOWN_PR_AP))
def test_known_pr_curve(metric):
    gt_boxes = _grid_gt(4)
    far = torch.tensor([[500.0, 500, 510, 510]])
    det_boxes = torch.cat([gt_boxes[0:1], far, gt_boxes[1:2], far + 30, gt_boxes[2:3]])
    det = dict(det_boxes=det_boxes, det_scores=torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]),
               det_classes=torch.zeros(5, dtype=torch.long), det_images=torch.zeros(5, dtype=torch.long))
    zeros = torch.zeros(4, dtype=torch.long)
    gt = dict(gt_boxes=gt_boxes, gt_classes=zeros, gt_images=zeros)
    r = compute_ap(**det, **gt, num_classes=1, metric=metric)
    assert r.ap.item() == pytest.approx(KNOWN_PR_AP[metric], abs=1e-12)
    assert r.recall.item() == pytest.approx(0.75, abs=1e-15)


@pytest.mark.parametrize("metric", ["coco101", "voc07", "voc12"])
def test_crowd_and_difficult_are_ignored_not_missed(metric):
    gt_boxes = torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 90, 90], [20.0, 0, 30, 10]])
    zeros = torch.zeros(3, dtype=torch.long)
    gt = dict(gt_boxes=gt_boxes, gt_classes=zeros, gt_images=zeros,
              gt_crowd=torch.tensor([False, True, False]), gt_difficult=torch.tensor([False, False, True]))
    # a perfect detection of GT 0, a small high-scored detection inside the crowd region (crowd IoU 1.0,
    # plain IoU 0.0625); nothing on the difficult GT
    det = dict(det_boxes=torch.tensor([[0.0, 0, 10, 10], [60.0, 60, 70, 70]]), det_scores=torch.tensor([0.5, 0.9]),
               det_classes=torch.zeros(2, dtype=torch.long), det_images=torch.zeros(2, dtype=torch.long))
    r = compute_ap(**det, **gt, num_classes=1, metric=metric)
    assert r.ap.item() == pytest.approx(1.0, abs=1e-12)
    assert r.num_gt.tolist() == [1] and r.num_ignored_gt.tolist() == [2]
    plain = compute_ap(**det, gt_boxes=gt_boxes, gt_classes=gt["gt_classes"], gt_images=gt["gt_images"],
                       num_classes=1, metric=metric)
    assert plain.ap.item() < 0.5  # without the flags: a top-scored FP and two misses


def test_empty_inputs():
    z4, zl = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    gt = dict(gt_boxes=_grid_gt(2), gt_classes=torch.tensor([0, 1]), gt_images=torch.tensor([0, 0]))
    for metric in ("coco101", "voc07", "voc12"):
        r = compute_ap(z4, torch.zeros(0), zl, zl, **gt, num_classes=3, metric=metric)
        assert r.ap[:2].tolist() == [0.0, 0.0] and math.isnan(r.ap[2].item())
        r = compute_ap(z4, torch.zeros(0), zl, zl, z4, zl, zl, num_classes=2, metric=metric)
        assert torch.isnan(r.ap).all() and math.isnan(r.mean_ap())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(metric="voc"), "metric must be one of coco101, voc07, voc12"),
        (dict(iou_threshold=0.0), "iou_threshold must be in (0, 1]"),
        (dict(num_classes=1), "det_classes must be in [0, 1)"),
    ],
)
def test_bad_arguments(kwargs, message):
    det = dict(det_boxes=_grid_gt(2), det_scores=torch.tensor([0.5, 0.4]), det_classes=torch.tensor([0, 1]),
               det_images=torch.tensor([0, 0]))
    gt = dict(gt_boxes=_grid_gt(1), gt_classes=torch.tensor([0]), gt_images=torch.tensor([0]))
    args = dict(num_classes=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        compute_ap(**det, **gt, **args)


def test_bad_shape_names_the_argument():
    with pytest.raises(ValueError, match=r"det_scores has shape \[3\], expected \[2\]"):
        compute_ap(_grid_gt(2), torch.zeros(3), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                   _grid_gt(1), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), num_classes=1)
