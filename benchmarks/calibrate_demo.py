#!/usr/bin/env python3
"""Calibrate the embedded demo pair: train a SOURCE-ONLY detector on ``synthetic_clear_train`` and report
AP50 on ``synthetic_clear_val`` (source) and ``synthetic_foggy_val`` (target).

The pair is meant to show a domain gap: the requirement (issue 4) is target AP50 <= 0.7 x source AP50
with a decent source AP50, for a plain detectron2 Faster R-CNN (R18-FPN, random init: no pretrained weights
are available offline) trained for a few CPU minutes. The figures go to docs/datasets.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calibrate_demo.py --threads 1   # ~5 min on one core
    # options: --root DIR (default $DETECTRON2_DATASETS or datasets/), --iters, --batch, --lr, --seed,
    #          --norm GN|BN, --fpn-channels, --fc-dim, --threads, --device cpu|cuda, --out DIR

On a machine shared with other jobs use one thread: two OpenMP threads there wait on each other and a
step costs 2-8x more. Results go to <out>/calibration.json; exit status 0 iff the requirement holds.

AP50 is pycocotools' COCO 101-point AP at IoU 0.5 (detectron2's COCOEvaluator, pure-Python path).
"""
import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import metaalign_det  # noqa: E402,F401  (compat first)

# isort: split
import torch  # noqa: E402


def build_cfg(args):
    """The calibration detector: everything small enough for ~1 s per step on 2 CPU cores."""
    from detectron2.config import get_cfg

    from metaalign_det.data.datasets.synthetic import DEFAULT_PARAMS
    from metaalign_det.data.datasets.synthetic_render import SYNTHETIC_CLASSES

    cfg = get_cfg()
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.WEIGHTS = ""  # random init
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0  # nothing pretrained to keep
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = args.norm  # FrozenBN of a random init is an identity: train a real norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = args.fpn_channels
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]  # objects are 8..120 px
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 1000
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 500
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 500
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 300
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(SYNTHETIC_CLASSES)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = args.fc_dim
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    h, w = DEFAULT_PARAMS.scene.height, DEFAULT_PARAMS.scene.width
    cfg.INPUT.MIN_SIZE_TRAIN = (h,)
    cfg.INPUT.MAX_SIZE_TRAIN = w
    cfg.INPUT.MIN_SIZE_TEST = h
    cfg.INPUT.MAX_SIZE_TEST = w
    cfg.DATASETS.TRAIN = ("synthetic_clear_train",)
    cfg.DATASETS.TEST = ("synthetic_clear_val", "synthetic_foggy_val")
    cfg.DATALOADER.NUM_WORKERS = 0  # tiny PNGs: loading in the main process costs less than a worker
    cfg.SOLVER.IMS_PER_BATCH = args.batch
    cfg.SOLVER.BASE_LR = args.lr
    cfg.SOLVER.MAX_ITER = args.iters
    cfg.SOLVER.WARMUP_ITERS = min(50, args.iters // 5)
    cfg.SOLVER.STEPS = (int(args.iters * 0.8),)
    cfg.SOLVER.CHECKPOINT_PERIOD = 10 ** 9
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True  # random init: keep the first steps finite
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 5.0
    cfg.TEST.EVAL_PERIOD = 0
    cfg.SEED = args.seed
    cfg.OUTPUT_DIR = args.out
    cfg.freeze()
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="datasets root (default $DETECTRON2_DATASETS or datasets/)")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--fpn-channels", type=int, default=128)
    ap.add_argument("--fc-dim", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: see above)")
    ap.add_argument("--norm", default="GN", help="backbone norm: GN (no running statistics) or BN")
    ap.add_argument("--device", default="cpu", help="cpu (what the figures in docs/datasets.md use) or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="output/calibrate_demo")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from detectron2.data import build_detection_test_loader
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset
    from detectron2.utils.logger import setup_logger

    from metaalign_det.data.datasets import builtin
    from metaalign_det.data.datasets.synthetic import ensure_synthetic_pair

    setup_logger(name="detectron2", abbrev_name="d2")
    setup_logger(name="metaalign_det")
    log = logging.getLogger("metaalign_det.calibrate")
    root = args.root or builtin.datasets_root()
    if args.root:
        builtin.register_all_builtin(root, overwrite=True)
    t0 = time.perf_counter()
    ensure_synthetic_pair(root)
    t_gen = time.perf_counter() - t0

    cfg = build_cfg(args)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    t1, c1 = time.perf_counter(), time.process_time()
    trainer.train()
    t_train, c_train = time.perf_counter() - t1, time.process_time() - c1  # wall, CPU (all threads)

    model = trainer.model
    model.eval()
    results = {}
    t2, c2 = time.perf_counter(), time.process_time()
    for name in cfg.DATASETS.TEST:
        evaluator = COCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=cfg.OUTPUT_DIR,
                                  use_fast_impl=False)
        res = inference_on_dataset(model, build_detection_test_loader(cfg, name), evaluator)
        results[name] = {"AP50": res["bbox"]["AP50"], "AP": res["bbox"]["AP"],
                         "per_class_AP": {k: v for k, v in res["bbox"].items() if k.startswith("AP-")}}
    t_eval, c_eval = time.perf_counter() - t2, time.process_time() - c2
    src, tgt = results["synthetic_clear_val"]["AP50"], results["synthetic_foggy_val"]["AP50"]
    summary = {
        "source_val_AP50": src, "target_val_AP50": tgt, "ratio": tgt / src if src else float("nan"),
        "requirement_met": bool(src > 0 and tgt <= 0.7 * src),
        "results": results, "iters": args.iters, "batch": args.batch, "lr": args.lr,
        "fpn_channels": args.fpn_channels, "fc_dim": args.fc_dim, "threads": args.threads,
        "norm": args.norm, "device": args.device,
        # wall seconds, and CPU seconds summed over threads (robust to other load on a shared machine)
        "seconds": {"generate": round(t_gen, 1), "train": round(t_train, 1), "eval": round(t_eval, 1),
                    "train_cpu": round(c_train, 1), "eval_cpu": round(c_eval, 1)},
    }
    with open(os.path.join(cfg.OUTPUT_DIR, "calibration.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log.info("calibration: clear val AP50 %.1f, foggy val AP50 %.1f (ratio %.2f, requirement <= 0.70: %s); "
             "train %.0f s, eval %.0f s", src, tgt, summary["ratio"], "met" if summary["requirement_met"]
             else "NOT met", t_train, t_eval)
    print(json.dumps(summary, indent=1))
    return 0 if summary["requirement_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
