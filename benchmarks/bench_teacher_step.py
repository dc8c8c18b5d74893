#!/usr/bin/env python3
"""Step time of the demo configs, teacher-student rows included, in ONE process on the same synthetic batch.

    python benchmarks/bench_teacher_step.py                 # CPU, the demo configs at 128x256, 2+2 images
    python benchmarks/bench_teacher_step.py --steps 10 --output docs/teacher_step.md

Each row is the step trainer that ``tools/train_net.py`` builds for that config (``build_step_trainer``),
random init, on the same random batch; the rows take turns step by step (round-robin), so a busy machine slows
them alike and the ratios stay meaningful. Teacher rows get exactly ``--pseudo`` pseudo-labels per target image
(threshold 0, ``TEST.DETECTIONS_PER_IMAGE``), as a trained teacher gives on the demo pair (2-7 objects per
scene); ``TEACHER.MONITOR_PERIOD`` 0 (the agreement check adds one student inference every 20 steps by
default). The strong views come with the batch (the paired loader builds them in its workers), so they are not
part of the step time. Median of ``--steps`` steps after ``--warmup``; ms and ratio to source-only and DA joint.
"""
import argparse
import os
import statistics
import time

import torch
from common import ROOT, Repeat, emit_table, synthetic_batch
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from metaalign_det.cli import setup_cfg
from metaalign_det.data.augmentation import SOURCE_STREAM, TARGET_STREAM, StrongAugmentation, add_strong_views
from metaalign_det.engine.trainer import build_step_trainer

DEMO = os.path.join(ROOT, "configs", "demo")
ROWS = {
    "source-only": "source_only_R18_FPN.yaml",
    "fair source-only (strong aug + EMA)": "fair_source_only_R18_FPN.yaml",
    "DA joint": "da_joint_R18_FPN.yaml",
    "MetaAlign FO": "metaalign_R18_FPN.yaml",
    "mean teacher": "teacher_R18_FPN.yaml",
    "teacher + DA joint": "teacher_align_R18_FPN.yaml",
    "teacher + MetaAlign FO": "teacher_metaalign_R18_FPN.yaml",
}


def build(name, args, source, target):
    cfg = setup_cfg(os.path.join(DEMO, ROWS[name]), [
        "MODEL.DEVICE", args.device, "TEACHER.BURN_IN_ITERS", "0", "TEACHER.SCORE_THRESH", "0.0",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", str(args.pseudo),
        "TEACHER.MONITOR_PERIOD", "0", "TEACHER.MONITOR_GT", "False", "META.JOINT_GRAD_COS_PERIOD", "0"])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    # the strong views come with the batch, as the paired loader's workers build them (not timed here)
    aug = StrongAugmentation.from_config(cfg)
    src = add_strong_views(source, aug, 0, 0, SOURCE_STREAM) if cfg.INPUT.STRONG_AUG.SOURCE != "weak" else source
    tgt = None
    if cfg.DATASETS.TRAIN_TARGET:
        tgt = add_strong_views(target, aug, 0, 0, TARGET_STREAM) if cfg.INPUT.STRONG_AUG.TARGET else target
    return build_step_trainer(cfg, model, Repeat((src, tgt)), optimizer)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--pseudo", type=int, default=4, help="pseudo-labels per target image")
    p.add_argument("--output", help="also write the Markdown table here")
    args = p.parse_args()
    source = synthetic_batch(2, 128, 256, 3, args.device, seed=1, boxes_per_image=4)
    target = synthetic_batch(2, 128, 256, 3, args.device, labelled=False, seed=2)
    trainers = {n: build(n, args, source, target) for n in ROWS}
    times = {n: [] for n in ROWS}
    with EventStorage(0) as storage:
        for i in range(args.warmup + args.steps):
            for n, t in trainers.items():  # round-robin: load changes hit every row alike
                t.iter = storage.iter = i
                t0 = time.perf_counter()
                t.run_step()
                if i >= args.warmup:
                    times[n].append(time.perf_counter() - t0)
            storage.step()
    med = {n: statistics.median(v) * 1000 for n, v in times.items()}
    threads = torch.get_num_threads()
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({threads} thread(s))"
    lines = [f"Step time on {dev}, torch {torch.__version__}, the demo configs (R18-FPN, 128x256, 2 source + 2 target "
             f"images, random init, {args.pseudo} pseudo-labels per target image), median of {args.steps} steps "
             f"after {args.warmup} warm-up, rows interleaved", "",
             "| config | ms / step | x source-only | x DA joint |", "|---|---|---|---|"]
    for n, ms in med.items():
        lines.append(f"| {n} | {ms:.0f} | {ms / med['source-only']:.2f} | {ms / med['DA joint']:.2f} |")
    emit_table(lines, args.output)


if __name__ == "__main__":
    main()
