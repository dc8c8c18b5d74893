#!/usr/bin/env python3
"""Calibrate a generated pair: train a SOURCE-ONLY detector on its source train set and report AP50 on its
source val and target val sets (and, for the sim -> real pair, on each one-part target val set).

``--pair synthetic`` (default), the embedded demo pair: train on ``synthetic_clear_train``, AP50 on
``synthetic_clear_val`` (source) and ``synthetic_foggy_val`` (target). ``--pair sim2real`` (what
``benchmarks/calibrate_sim2real.py`` runs): train on ``sim2real_sim_train``, AP50 on ``sim2real_sim_val``,
``sim2real_real_val`` and ``sim2real_<part>_real_val`` for each part of the real style.

A pair is meant to show a domain gap: the requirement is target AP50 <= 0.7 x source AP50 with a decent
source AP50 (the sim -> real pair: source AP50 >= 90), for a plain detectron2 Faster R-CNN (R18-FPN, random
init: no pretrained weights are available offline) trained for a few CPU minutes. The figures go to
docs/datasets.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calibrate_demo.py --threads 1   # ~5 min on one core
    # options: --pair synthetic|sim2real, --root DIR (default $DETECTRON2_DATASETS or datasets/), --iters,
    #          --batch, --lr, --seed, --norm GN|BN, --fpn-channels, --fc-dim, --threads, --device cpu|cuda,
    #          --out DIR (default output/calibrate_demo, or output/calibrate_sim2real)

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

from metaalign_det.data.datasets.sim2real_render import PARTS as SIM2REAL_PARTS  # noqa: E402

# what each pair calibrates: source train set, source and target val sets, further target val sets (reported,
# not part of the requirement), the requirement's lowest source AP50, the default output folder
PAIRS = {
    "synthetic": {"train": "synthetic_clear_train", "source_val": "synthetic_clear_val",
                  "target_val": "synthetic_foggy_val", "more_val": {}, "min_source_ap50": 0.0,
                  "out": "output/calibrate_demo", "schedule": {"iters": 300, "batch": 4, "lr": 0.02}},
    "sim2real": {"train": "sim2real_sim_train", "source_val": "sim2real_sim_val",
                 "target_val": "sim2real_real_val", "more_val": {p: f"sim2real_{p}_real_val" for p in SIM2REAL_PARTS},
                 "min_source_ap50": 90.0, "out": "output/calibrate_sim2real",
                 # batch 4 at lr 0.02 collapsed on this pair (source AP50 1.5): one car class, many small boxes
                 "schedule": {"iters": 800, "batch": 2, "lr": 0.01}},
}


def generate(pair, root):
    """Generate (or reuse) every set the calibration of ``pair`` reads under ``root``."""
    if pair == "synthetic":
        from metaalign_det.data.datasets.synthetic import ensure_synthetic_pair

        ensure_synthetic_pair(root)
    else:
        from metaalign_det.data.datasets.sim2real import ensure_sim2real

        for variant in ["sim", "real"] + [f"real_{p}" for p in PAIRS[pair]["more_val"]]:
            ensure_sim2real(root, variant)


def image_size(pair):
    """(height, width) of the pair's images."""
    if pair == "synthetic":
        from metaalign_det.data.datasets.synthetic import DEFAULT_PARAMS

        return DEFAULT_PARAMS.scene.height, DEFAULT_PARAMS.scene.width
    from metaalign_det.data.datasets.sim2real import DEFAULT_SIM2REAL_PARAMS

    return DEFAULT_SIM2REAL_PARAMS.scene.height, DEFAULT_SIM2REAL_PARAMS.scene.width


def build_cfg(args):
    """The calibration detector: everything small enough for ~1 s per step on 2 CPU cores."""
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog

    pair = PAIRS[args.pair]
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
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(MetadataCatalog.get(pair["train"]).thing_classes)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = args.fc_dim
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    h, w = image_size(args.pair)
    cfg.INPUT.MIN_SIZE_TRAIN = (h,)
    cfg.INPUT.MAX_SIZE_TRAIN = w
    cfg.INPUT.MIN_SIZE_TEST = h
    cfg.INPUT.MAX_SIZE_TEST = w
    cfg.DATASETS.TRAIN = (pair["train"],)
    cfg.DATASETS.TEST = (pair["source_val"], pair["target_val"]) + tuple(pair["more_val"].values())
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


def parse_args(argv=None, default_pair="synthetic", description=None):
    """The command line (``default_pair``: what ``--pair`` is when not given); ``out`` filled from the pair."""
    ap = argparse.ArgumentParser(description=description or __doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", choices=sorted(PAIRS), default=default_pair, help="the generated pair to calibrate")
    ap.add_argument("--root", default=None, help="datasets root (default $DETECTRON2_DATASETS or datasets/)")
    ap.add_argument("--iters", type=int, default=None, help="default: the pair's (synthetic 300, sim2real 800)")
    ap.add_argument("--batch", type=int, default=None, help="default: the pair's (synthetic 4, sim2real 2)")
    ap.add_argument("--lr", type=float, default=None, help="default: the pair's (synthetic 0.02, sim2real 0.01)")
    ap.add_argument("--fpn-channels", type=int, default=128)
    ap.add_argument("--fc-dim", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: see above)")
    ap.add_argument("--norm", default="GN", help="backbone norm: GN (no running statistics) or BN")
    ap.add_argument("--device", default="cpu", help="cpu (what the figures in docs/datasets.md use) or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output folder (default: output/calibrate_demo, "
                                                  "or output/calibrate_sim2real)")
    args = ap.parse_args(argv)
    args.out = args.out or PAIRS[args.pair]["out"]
    for key, value in PAIRS[args.pair]["schedule"].items():  # each pair's calibration schedule
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None, default_pair="synthetic", description=None):
    args = parse_args(argv, default_pair, description)
    pair = PAIRS[args.pair]
    torch.set_num_threads(args.threads)

    from detectron2.data import build_detection_test_loader
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from metaalign_det.data.datasets import builtin

    setup_logger(name="detectron2", abbrev_name="d2")
    setup_logger(name="metaalign_det")
    log = logging.getLogger("metaalign_det.calibrate")
    root = args.root or builtin.datasets_root()
    if args.root:
        builtin.register_all_builtin(root, overwrite=True)
    t0 = time.perf_counter()
    generate(args.pair, root)
    t_gen = time.perf_counter() - t0

    cfg = build_cfg(args)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    # what detectron2's default_setup does with cfg.SEED: seed every global RNG, so that the model init and the
    # sampler's order (a shared random seed drawn from numpy) are those of --seed -- a rerun is the same run
    seed_all_rng(cfg.SEED)
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
    src, tgt = results[pair["source_val"]]["AP50"], results[pair["target_val"]]["AP50"]
    summary = {
        "pair": args.pair, "source_val_AP50": src, "target_val_AP50": tgt,
        "ratio": tgt / src if src else float("nan"),
        "requirement": (f"source AP50 >= {pair['min_source_ap50']:g}" if pair["min_source_ap50"] else "source AP50 > 0")
        + " and target AP50 <= 0.7 x source AP50",
        "requirement_met": bool(src > 0 and src >= pair["min_source_ap50"] and tgt <= 0.7 * src),
        # the one-part target val sets (sim -> real): AP50 and its ratio to the source's
        "more_val_AP50": {k: results[n]["AP50"] for k, n in pair["more_val"].items()},
        "more_val_ratio": {k: (results[n]["AP50"] / src if src else float("nan")) for k, n in pair["more_val"].items()},
        "results": results, "iters": args.iters, "batch": args.batch, "lr": args.lr,
        "fpn_channels": args.fpn_channels, "fc_dim": args.fc_dim, "threads": args.threads,
        "norm": args.norm, "device": args.device,
        # wall seconds, and CPU seconds summed over threads (robust to other load on a shared machine)
        "seconds": {"generate": round(t_gen, 1), "train": round(t_train, 1), "eval": round(t_eval, 1),
                    "train_cpu": round(c_train, 1), "eval_cpu": round(c_eval, 1)},
    }
    with open(os.path.join(cfg.OUTPUT_DIR, "calibration.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log.info("calibration (%s): source val AP50 %.1f, target val AP50 %.1f (ratio %.2f; requirement %s: %s); "
             "train %.0f s, eval %.0f s", args.pair, src, tgt, summary["ratio"], summary["requirement"],
             "met" if summary["requirement_met"] else "NOT met", t_train, t_eval)
    for k, ap50 in summary["more_val_AP50"].items():
        log.info("  %s alone: target val AP50 %.1f (ratio %.2f)", k, ap50, summary["more_val_ratio"][k])
    print(json.dumps(summary, indent=1))
    return 0 if summary["requirement_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
