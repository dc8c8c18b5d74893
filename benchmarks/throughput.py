#!/usr/bin/env python3
"""End-to-end training throughput with real data loading (issue: "what a user will wait for").

Cityscapes-sized synthetic images (2048x1024 JPEGs written once to --data-dir) are read by detectron2's
loader with workers, resized to 600 short side, and fed as 2 source + 2 target images per step to an R50-C4
DA-Faster detector; DA joint vs MetaAlign first-order, fp32 and bf16. Reports step time (mean wall time per
step, data loading included), images/s, GPU utilisation (nvidia-smi sampled during the timed window) and the
projected hours for a 70,000-iteration schedule.

    python benchmarks/throughput.py --device cuda --workers 4
"""
import argparse
import os
import subprocess
import time

import numpy as np
import torch
from common import emit_table, preset_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage
from PIL import Image

from metaalign_det.data.paired_loader import build_paired_train_loader
from metaalign_det.engine.trainer import build_step_trainer
from metaalign_det.utils.io import atomic_write_json

CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def write_split(root, n, seed):
    ann = os.path.join(root, "ann.json")
    if os.path.exists(ann):
        return ann
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n):
        img = rng.integers(0, 255, (1024, 2048, 3), dtype=np.uint8)
        for _ in range(8):
            x, y = int(rng.integers(0, 1800)), int(rng.integers(0, 800))
            w, h = int(rng.integers(40, 240)), int(rng.integers(40, 220))
            c = int(rng.integers(8))
            img[y : y + h, x : x + w] = rng.integers(0, 255, 3, dtype=np.uint8)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        name = f"{i:04d}.jpg"
        Image.fromarray(img).save(os.path.join(root, name), quality=90)
        images.append({"id": i + 1, "file_name": name, "height": 1024, "width": 2048})
    cats = [{"id": j + 1, "name": c} for j, c in enumerate(CLASSES)]
    atomic_write_json(ann, {"images": images, "annotations": anns, "categories": cats})
    return ann


class GpuUtil:
    """Samples nvidia-smi's utilization.gpu every 200 ms between start() and stop()."""

    def start(self):
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None

    def stop(self):
        if self.proc is None:
            return float("nan")
        self.proc.terminate()
        out = self.proc.communicate()[0]
        vals = [float(x) for x in out.split() if x.strip().replace(".", "").isdigit()]
        return float(np.mean(vals)) if vals else float("nan")


def run(variant, args):
    mode, amp = {"DA joint fp32": ("none", False), "MetaAlign FO fp32": ("first_order", False),
                 "DA joint bf16": ("none", True), "MetaAlign FO bf16": ("first_order", True)}[variant]
    cfg = preset_cfg("gpu" if args.device.startswith("cuda") else "cpu", args.device, [
        "DATASETS.TRAIN", "('tp_source',)", "DATASETS.TRAIN_TARGET", "('tp_target',)",
        "DATALOADER.NUM_WORKERS", str(args.workers), "META.MODE", mode, "META.JOINT_GRAD_COS_PERIOD", "0",
        "SOLVER.AMP.ENABLED", str(amp), "SOLVER.AMP.DTYPE", "bfloat16", "SEED", "0",
        "MODEL.ROI_HEADS.NUM_CLASSES", "8",
    ])
    torch.manual_seed(0)
    model = build_model(cfg)
    step = build_step_trainer(cfg, model, build_paired_train_loader(cfg), build_optimizer(cfg, model))
    cuda = args.device.startswith("cuda")
    util = GpuUtil()
    with EventStorage(0) as storage:
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                if cuda:
                    torch.cuda.synchronize()
                util.start()
                t0 = time.perf_counter()
            step.iter = storage.iter = i
            step.run_step()
            storage.step()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    gpu = util.stop() if cuda else float("nan")
    del step, model
    if cuda:
        torch.cuda.empty_cache()
    s = wall / args.steps
    return s * 1000, 4 / s, gpu, 70000 * s / 3600


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--images", type=int, default=48, help="synthetic images per domain")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--data-dir", default="/tmp/metaalign_throughput")
    p.add_argument("--output")
    args = p.parse_args()
    t = time.perf_counter()
    for name, seed in (("tp_source", 1), ("tp_target", 2)):
        root = os.path.join(args.data_dir, name)
        register_coco_instances(name, {}, write_split(root, args.images, seed), root)
        MetadataCatalog.get(name).thing_classes = CLASSES
    print(f"data ready in {time.perf_counter() - t:.1f}s", flush=True)
    rows = []
    for v in ["DA joint fp32", "MetaAlign FO fp32", "DA joint bf16", "MetaAlign FO bf16"]:
        r = run(v, args)
        rows.append((v,) + r)
        print(f"{v}: {r[0]:.0f} ms/step, {r[1]:.1f} img/s, GPU util {r[2]:.0f}%, 70k iters = {r[3]:.1f} h",
              flush=True)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    model = "R50-C4, 2048x1024 JPEGs -> 600 short side" if dev != "CPU" else \
        "quick R18-FPN (CPU preset), 2048x1024 JPEGs -> 128 short side"
    lines = [f"End-to-end throughput on {dev}, torch {torch.__version__}: {model}, "
             f"2 source + 2 target per step, {args.workers} loader workers per domain, mean of "
             f"{args.steps} steps after {args.warmup} warm-up", "",
             "| step | ms/step (data incl.) | images/s | GPU util % | 70k iterations (h) |",
             "|---|---|---|---|---|"]
    lines += [f"| {v} | {ms:.0f} | {ips:.1f} | {gpu:.0f} | {h:.1f} |" for v, ms, ips, gpu, h in rows]
    emit_table(lines, args.output)


if __name__ == "__main__":
    main()
