#!/usr/bin/env python
"""See what a model detects, and how training went.

predictions: for the first N images of a registered dataset, one PNG per image with the ground truth and the
  predictions of one or two checkpoints side by side (e.g. source-only vs adapted), each panel titled:
    python tools/visualize.py predictions --config-file configs/X.yaml \\
        --weights output/source_only/model_final.pth output/metaalign/model_final.pth \\
        --labels source-only MetaAlign --dataset foggy_cityscapes_det_val_beta0.02 --num-images 8 --out-dir vis/
  Two checkpoints trained with different configs: give two --config-file values (same order as --weights).
  A PNG is (H * scale) x (panels * W * scale) pixels; panels = ground truth (unless --no-gt) + checkpoints.

curves: losses, mean AP over iterations and meta/grad_cos (when logged) from an output dir's metrics.json:
    python tools/visualize.py curves output/metaalign --out output/metaalign/curves.png

Bad input exits with status 2 and one line on stderr.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # imported, not run: tools/ for _toolstart
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _toolstart  # noqa: E402  (stdlib only: the start-up line, library notices kept off the console)

_toolstart.begin("visualize.py")

# isort: split
import metaalign_det  # noqa: E402,F401  (compat first; registers the project's models and datasets)

# isort: split
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger

from metaalign_det.cli import (
    ToolError,
    fail,
    load_config,
    load_dataset_dicts,
    register_coco_json,
    split_config_overrides,
)
from metaalign_det.evaluation import WeightsMismatchError, load_eval_weights
from metaalign_det.utils.plots import load_metrics, plot_training_curves
from metaalign_det.utils.visualization import (
    draw_ground_truth,
    draw_predictions,
    side_by_side,
    titles_for,
    write_png,
)

TOOL = "visualize.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predictions", help="ground truth + predictions of 1-2 checkpoints, side by side")
    pr.add_argument("--config-file", nargs="+", required=True, metavar="YAML", help="one config, or one per checkpoint")
    pr.add_argument("--weights", nargs="+", required=True, metavar="PTH", help="one or two checkpoints")
    pr.add_argument("--labels", nargs="+", help="panel titles for the checkpoints (default: file names)")
    pr.add_argument("--dataset", required=True, help="registered dataset name")
    pr.add_argument("--num-images", type=int, default=8, help="the first N images of the dataset")
    pr.add_argument("--out-dir", required=True, help="folder for the PNGs")
    pr.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    pr.add_argument("--scale", type=float, default=1.0, help="resize factor of every panel")
    pr.add_argument("--no-gt", action="store_true", help="leave out the ground-truth panel")
    pr.add_argument("--device", help="cpu / cuda (default: MODEL.DEVICE)")
    pr.add_argument("--coco-json", action="append", default=[], metavar="NAME=JSON:IMAGE_ROOT",
                    help="register a COCO-format dataset under NAME first (repeatable)")
    pr.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every config: KEY VALUE ...")
    cu = sub.add_parser("curves", help="plot metrics.json")
    cu.add_argument("path", help="an output dir holding metrics.json, or the file itself")
    cu.add_argument("--out", help="PNG to write (default: <output dir>/curves.png)")
    cu.add_argument("--title", help="figure title (default: the output dir)")
    args = p.parse_args(argv)
    if args.command == "predictions":
        for name in ("labels", "weights", "config_file"):  # list options may have swallowed KEY VALUE pairs
            values, args.opts = split_config_overrides(getattr(args, name), args.opts)
            setattr(args, name, values)
    return args


def _predictors(args):
    if not 1 <= len(args.weights) <= 2:
        raise ToolError(f"--weights: give one or two checkpoints, got {len(args.weights)}")
    if not args.config_file:
        raise ToolError("--config-file: give one config, or one per checkpoint")
    if len(args.config_file) not in (1, len(args.weights)):
        raise ToolError(f"--config-file: give one, or one per checkpoint ({len(args.weights)})")
    for w in args.weights:
        if not os.path.isfile(w):
            raise ToolError(f"--weights {w}: no such file")
    configs = args.config_file * (len(args.weights) // len(args.config_file))
    predictors = []
    for cfg_file, weights in zip(configs, args.weights):
        cfg = load_config(cfg_file, args.opts)
        if args.device:
            cfg.MODEL.DEVICE = args.device
        cfg.MODEL.WEIGHTS = ""  # DefaultPredictor then builds without loading; the checked load follows
        predictor = DefaultPredictor(cfg)
        for warning in load_eval_weights(predictor.model, cfg, weights).warnings:
            logging.getLogger(__name__).warning(warning)
        predictors.append(predictor)
    return predictors


def predictions(args):
    if args.num_images < 1:
        raise ToolError(f"--num-images {args.num_images}: expected >= 1")
    if not args.scale > 0:
        raise ToolError(f"--scale {args.scale}: expected a value > 0")
    register_coco_json(args.coco_json)
    predictors = _predictors(args)
    try:
        titles = titles_for(args.weights, args.labels)
    except ValueError as e:
        raise ToolError(str(e)) from e
    records = load_dataset_dicts(args.dataset)[: args.num_images]  # registered, readable, not empty
    metadata = MetadataCatalog.get(args.dataset)
    written = []
    for i, record in enumerate(records):
        bgr = read_image(record["file_name"], format="BGR")
        rgb = bgr[:, :, ::-1]
        panels = [] if args.no_gt else [draw_ground_truth(rgb, record, metadata, "ground truth", args.scale)]
        for predictor, title in zip(predictors, titles):
            inst = predictor(bgr)["instances"]  # DefaultPredictor takes BGR and converts for INPUT.FORMAT
            panels.append(draw_predictions(rgb, inst, metadata, args.score_threshold, title, args.scale))
        name = os.path.splitext(os.path.basename(record["file_name"]))[0]
        written.append(write_png(os.path.join(args.out_dir, f"{i:03d}_{name}.png"), side_by_side(panels)))
    print(f"wrote {len(written)} PNG(s) to {args.out_dir}", flush=True)
    return written


def curves(args):
    folder = args.path if os.path.isdir(args.path) else os.path.dirname(os.path.abspath(args.path))
    out = args.out or os.path.join(folder, "curves.png")
    try:
        records = load_metrics(args.path)
        panels = plot_training_curves(records, out, title=args.title or os.path.basename(os.path.abspath(folder)))
    except ValueError as e:  # unreadable / empty metrics: a user error, one line
        raise ToolError(str(e)) from e
    print(f"wrote {out} ({', '.join(panels)})", flush=True)
    return out


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="metaalign_det")
    logging.getLogger("metaalign_det").setLevel(logging.WARNING)
    try:
        return predictions(args) if args.command == "predictions" else curves(args)
    except (ToolError, WeightsMismatchError, FileNotFoundError) as e:
        fail(TOOL, e)


if __name__ == "__main__":
    main()
