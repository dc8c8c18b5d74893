#!/usr/bin/env python
"""AP50 evaluation time: torch ``compute_ap`` (this project) vs pycocotools' evaluate + accumulate.

A Foggy-Cityscapes-val-sized synthetic case: 500 images of 2048x1024, 8 classes with Cityscapes-like
frequencies (~20 GT per image, 5% crowd), 100 detections per image (jittered copies of GT with duplicates,
class confusions and background false positives; scores higher for better boxes), i.e. what a detector
with DETECTIONS_PER_IMAGE=100 hands to the evaluator. Same inputs, one process; both AP50s are printed.

pycocotools is timed twice: with its default parameters (10 IoUs x 4 areas x 3 maxDets: what detectron2's
COCOEvaluator runs) and restricted to AP50 (iouThrs=[0.5], areaRng all, maxDets=[100]: the same work as
ours, the fair comparison). Detection/GT conversion (loadRes, building tensors) is not timed for either.
The torch time is the median of --repeats runs after one warm-up, with inputs already on the device.

  python benchmarks/bench_eval.py                       # CPU
  python benchmarks/bench_eval.py --device cpu cuda     # CPU and GPU
"""
import argparse
import contextlib
import io
import statistics
import sys
import time

import numpy as np
import torch

import metaalign_det  # noqa: F401
from metaalign_det.evaluation.ap import compute_ap
from metaalign_det.utils.io import atomic_write_json

# Cityscapes val: share of instances per class (person, rider, car, truck, bus, train, motorcycle, bicycle)
CLASS_FREQ = np.array([0.30, 0.04, 0.45, 0.02, 0.015, 0.005, 0.02, 0.15])
W, H = 2048, 1024


def synthetic_case(num_images=500, num_classes=8, dets_per_image=100, gt_per_image=20, seed=0):
    """Flat numpy arrays of detections and GT (boxes XYXY float32 pixels) for ``num_images`` images."""
    rng = np.random.default_rng(seed)
    freq = CLASS_FREQ[:num_classes] / CLASS_FREQ[:num_classes].sum()
    gb, gc, gi, gcr, db, ds, dc, di = ([] for _ in range(8))
    for i in range(num_images):
        n = max(1, rng.poisson(gt_per_image))
        cls = rng.choice(num_classes, size=n, p=freq)
        side = np.exp(rng.normal(np.log(60), 0.8, size=n)).clip(8, 700)  # log-normal object size
        aspect = np.exp(rng.normal(0.0, 0.4, size=n))
        w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
        x = rng.uniform(0, W - w)
        low = np.minimum(H * 0.3, H - h)  # objects sit in the lower part of street scenes: overlap
        y = low + rng.random(n) * (H - h - low)
        boxes = np.stack([x, y, x + w, y + h], 1)
        crowd = rng.random(n) < 0.05
        gb.append(boxes), gc.append(cls), gi.append(np.full(n, i)), gcr.append(crowd)
        # detections: 1-4 per object (duplicates), jitter proportional to size, 10% class confusion
        reps = rng.integers(1, 5, size=n)
        src = np.repeat(np.arange(n), reps)
        quality = rng.beta(2, 1.2, size=src.size)  # 1 = tight box
        jitter = rng.normal(0, 1, size=(src.size, 4)) * (1.0 - quality)[:, None] * 0.35
        sw, sh = w[src], h[src]
        det = boxes[src] + jitter * np.stack([sw, sh, sw, sh], 1)
        dcls = np.where(rng.random(src.size) < 0.1, rng.integers(0, num_classes, src.size), cls[src])
        score = (0.3 + 0.7 * quality) * rng.uniform(0.5, 1.0, src.size)
        # background false positives fill up to 100 per image with low scores
        nb = max(0, dets_per_image - src.size)
        bs = np.exp(rng.normal(np.log(50), 0.7, size=nb)).clip(8, 500)
        bx, by = rng.uniform(0, W - bs), rng.uniform(0, H - bs)
        bg = np.stack([bx, by, bx + bs, by + bs * rng.uniform(0.5, 2, nb)], 1)
        det = np.concatenate([det, bg])
        dcls = np.concatenate([dcls, rng.integers(0, num_classes, nb)])
        score = np.concatenate([score, rng.uniform(0.01, 0.5, nb)])
        det = np.concatenate([np.minimum(det[:, :2], det[:, 2:]), np.maximum(det[:, :2], det[:, 2:])], 1)
        det = det.clip(0, [W, H, W, H])
        keep = np.argsort(-score, kind="stable")[:dets_per_image]  # the model's top-100 per image
        db.append(det[keep]), ds.append(score[keep]), dc.append(dcls[keep]), di.append(np.full(keep.size, i))
    f32 = np.float32
    det = dict(boxes=np.concatenate(db).astype(f32), scores=np.concatenate(ds).astype(f32),
               classes=np.concatenate(dc), images=np.concatenate(di))
    gt = dict(boxes=np.concatenate(gb).astype(f32), classes=np.concatenate(gc), images=np.concatenate(gi),
              crowd=np.concatenate(gcr))
    return det, gt


def pycocotools_objects(det, gt, num_images, num_classes):
    """COCO ground truth and loaded results (untimed)."""
    from pycocotools.coco import COCO

    def xywh(b):
        b = b.astype(np.float64)
        return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist()

    gboxes = xywh(gt["boxes"])
    anns = [dict(id=j + 1, image_id=int(gt["images"][j]) + 1, category_id=int(gt["classes"][j]) + 1, bbox=b,
                 area=b[2] * b[3], iscrowd=int(gt["crowd"][j])) for j, b in enumerate(gboxes)]
    coco = COCO()
    coco.dataset = dict(images=[dict(id=i + 1) for i in range(num_images)],
                        categories=[dict(id=c + 1) for c in range(num_classes)], annotations=anns)
    dets = [dict(image_id=int(det["images"][k]) + 1, category_id=int(det["classes"][k]) + 1, bbox=b,
                 score=float(det["scores"][k])) for k, b in enumerate(xywh(det["boxes"]))]
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        res = coco.loadRes(dets)
    return coco, res


def time_pycocotools(coco, res, num_classes, ap50_only):
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(coco, res, "bbox")
    if ap50_only:
        ev.params.iouThrs = np.array([0.5])
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e5**2]], ["all"]
        ev.params.maxDets = [100]
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        ev.evaluate()
        ev.accumulate()
        seconds = time.perf_counter() - t0
    p = ev.eval["precision"][0, :, :, 0, -1]  # AP50 row: [R, K]
    per_class = np.array([100 * p[:, k][p[:, k] > -1].mean() if (p[:, k] > -1).any() else np.nan
                          for k in range(num_classes)])
    return seconds, per_class


def time_torch(det, gt, num_classes, device, repeats, metric="coco101"):
    dev = torch.device(device)
    t = {k: torch.as_tensor(v, device=dev) for k, v in det.items()}
    g = {k: torch.as_tensor(v, device=dev) for k, v in gt.items()}
    args = (t["boxes"], t["scores"], t["classes"], t["images"], g["boxes"], g["classes"], g["images"], g["crowd"])

    def once():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        r = compute_ap(*args, num_classes=num_classes, metric=metric)  # returns CPU tensors: synchronises
        return time.perf_counter() - t0, r

    once()  # warm-up (allocator, kernels)
    runs = [once() for _ in range(repeats)]
    return statistics.median(s for s, _ in runs), runs[-1][1].ap.numpy() * 100


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", nargs="+", default=["cpu"], help="devices for the torch evaluator")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--dets", type=int, default=100, help="detections per image")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-coco-default", action="store_true", help="skip pycocotools with default params")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)

    det, gt = synthetic_case(args.images, args.classes, args.dets, seed=args.seed)
    print(f"synthetic case: {args.images} images, {args.classes} classes, {det['scores'].size} detections, "
          f"{gt['classes'].size} GT ({int(gt['crowd'].sum())} crowd); torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}", flush=True)
    coco, res = pycocotools_objects(det, gt, args.images, args.classes)
    rows = []
    if not args.skip_coco_default:
        s, ap = time_pycocotools(coco, res, args.classes, ap50_only=False)
        rows.append(("pycocotools, default params", "cpu", s, ap))
        print(f"pycocotools (default params): {s:.3f} s, AP50 {np.nanmean(ap):.4f}", flush=True)
    s, ref = time_pycocotools(coco, res, args.classes, ap50_only=True)
    rows.append(("pycocotools, AP50 only", "cpu", s, ref))
    print(f"pycocotools (AP50 only):      {s:.3f} s, AP50 {np.nanmean(ref):.4f}", flush=True)
    base = s
    for device in args.device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"skipping {device}: CUDA is not available", file=sys.stderr)
            continue
        s, ap = time_torch(det, gt, args.classes, device, args.repeats)
        name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
        rows.append(("torch compute_ap (coco101)", name, s, ap))
        diff = np.nanmax(np.abs(ap - ref))
        print(f"torch on {name}: {s:.4f} s, AP50 {np.nanmean(ap):.4f}, max |per-class diff| {diff:.2e}", flush=True)
        if not np.allclose(np.nan_to_num(ap), np.nan_to_num(ref), atol=1e-6, rtol=0):
            print("ERROR: per-class AP50 differs from pycocotools", file=sys.stderr)
            return 1

    default = rows[0][2] if not args.skip_coco_default else None
    print("\n| evaluator | device | seconds | speed-up vs pycocotools default | vs pycocotools AP50-only | AP50 |")
    print("|---|---|---|---|---|---|")
    for name, device, s, ap in rows:
        vs_default = f"{default / s:.1f}x" if default else "-"
        print(f"| {name} | {device} | {s:.4f} | {vs_default} | {base / s:.1f}x | {np.nanmean(ap):.4f} |")
    if args.json:
        atomic_write_json(args.json, dict(
            images=args.images, classes=args.classes, detections=int(det["scores"].size), gt=int(gt["classes"].size),
            rows=[dict(evaluator=n, device=d, seconds=s, ap50=float(np.nanmean(a))) for n, d, s, a in rows],
        ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
