#!/usr/bin/env python
"""Evaluate a checkpoint: per-class AP at one IoU (default AP50, pycocotools' 101-point rule) on one or more
registered datasets; prints a table per dataset whose title names the metric, the IoU and the dataset.

  python tools/eval.py --config-file configs/X.yaml --weights output/model_final.pth
  python tools/eval.py --config-file configs/X.yaml --weights W.pth --dataset foggy_val --metric voc07 \\
      --output output/ap.json
  python tools/eval.py --config-file configs/X.yaml --weights W.pth \\
      --coco-json my_val=/data/my_val.json:/data/images --dataset my_val
  python tools/eval.py --config-file configs/X.yaml --weights W.pth --num-gpus 4 --device cuda

Bad input (missing config or weights file, unknown dataset, weights that do not fit the config, class count
that does not match the dataset) exits with status 2 and one line on stderr naming what is wrong.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # imported, not run: tools/ for _toolstart
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _toolstart  # noqa: E402  (stdlib only: the start-up line, library notices kept off the console)

_toolstart.begin("eval.py")

# isort: split
import metaalign_det  # noqa: E402,F401  (compat first; registers the project's models and datasets)

# isort: split
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import launch
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from metaalign_det.cli import (
    ToolError,
    check_datasets,
    fail,
    load_config,
    load_dataset_dicts,
    register_coco_json,
    register_config_datasets,
    split_config_overrides,
)
from metaalign_det.engine.trainer import check_num_gpus
from metaalign_det.evaluation import (
    METRICS,
    DetectionAPEvaluator,
    WeightsMismatchError,
    format_ap_table,
    load_eval_weights,
    protocol_text,
    unlabelled_reason,
)
from metaalign_det.evaluation.ap import default_max_dets
from metaalign_det.utils.io import atomic_write_json

TOOL = "eval.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="YAML", help="the training config")
    p.add_argument("--weights", required=True, metavar="PTH", help="checkpoint (.pth / detectron2 .pkl)")
    p.add_argument("--dataset", nargs="+", metavar="NAME", help="registered dataset names (default: DATASETS.TEST)")
    p.add_argument("--metric", choices=METRICS, help="AP convention (default: TEST.AP_METRIC)")
    p.add_argument("--iou", type=float, help="IoU threshold (default: TEST.AP_IOU)")
    p.add_argument("--device", help="cpu / cuda (default: MODEL.DEVICE)")
    p.add_argument("--output", metavar="JSON", help="write per-class numbers and the protocol here")
    p.add_argument("--num-gpus", type=int, default=1, help="processes, one GPU each (detectron2 launch)")
    p.add_argument("--dist-url", default="auto", help="init URL for --num-gpus > 1")
    p.add_argument(
        "--coco-json", action="append", default=[], metavar="NAME=JSON:IMAGE_ROOT",
        help="register a COCO-format dataset under NAME first (repeatable)",
    )  # fmt: skip
    p.add_argument("--coco-ap", action="store_true", help="also COCO AP@[.5:.95] etc. through pycocotools (slow)")
    p.add_argument(
        "--allow-missing-keys", action="store_true",
        help="evaluate even if backbone / RPN / ROI-head weights are missing from the checkpoint",
    )  # fmt: skip
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = p.parse_args(argv)
    args.dataset, args.opts = split_config_overrides(args.dataset, args.opts)
    return args


def setup(args):
    """Config, registered + checked datasets, and a CPU model with the checked weights loaded."""
    try:
        check_num_gpus(args.num_gpus)  # the same check as tools/train_net.py: N CUDA devices for N processes
    except ValueError as e:
        raise ToolError(str(e)) from None
    cfg = load_config(args.config_file, args.opts)
    if not os.path.isfile(args.weights):
        raise ToolError(f"--weights {args.weights}: no such file")
    if args.device:
        cfg.MODEL.DEVICE = args.device
    if args.metric:
        cfg.TEST.AP_METRIC = args.metric
    if args.iou is not None:
        if not 0.0 < args.iou <= 1.0:
            raise ToolError(f"--iou {args.iou}: expected a value in (0, 1]")
        cfg.TEST.AP_IOU = args.iou
    if cfg.TEST.AP_METRIC not in METRICS:
        raise ToolError(f"TEST.AP_METRIC {cfg.TEST.AP_METRIC!r}: expected one of {', '.join(METRICS)}")
    if not isinstance(cfg.TEST.AP_IOU, (int, float)) or not 0.0 < cfg.TEST.AP_IOU <= 1.0:
        raise ToolError(f"TEST.AP_IOU {cfg.TEST.AP_IOU!r}: expected a value in (0, 1]")
    if args.num_gpus > 1 and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise ToolError(f"--num-gpus {args.num_gpus} needs --device cuda (detectron2's launch uses NCCL)")
    cfg.MODEL.WEIGHTS = args.weights
    cfg.freeze()
    register_coco_json(args.coco_json)  # the config's DATASETS.PAIR_MANIFESTS: registered by load_config
    datasets = list(args.dataset or cfg.DATASETS.TEST)
    if not datasets:
        raise ToolError("no dataset to evaluate: pass --dataset NAME or set DATASETS.TEST in the config")
    check_datasets(datasets)
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    for name in datasets:
        # unreadable or empty: one line; COCO-json datasets fill their metadata here
        reason = unlabelled_reason(name, load_dataset_dicts(name))
        if reason:
            raise ToolError(reason)
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != num_classes:
            raise ToolError(
                f"dataset '{name}' has {len(classes)} classes but the config's model predicts {num_classes} "
                f"(MODEL.ROI_HEADS.NUM_CLASSES)"
            )
    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    model = build_model(cpu_cfg)
    for warning in load_eval_weights(model, cfg, args.weights, allow_missing=args.allow_missing_keys).warnings:
        logging.getLogger(__name__).warning(warning)
    return cfg, datasets, model


def run(cfg, args, datasets, model=None):
    """Evaluate on every dataset (each process of a launch); the main process prints and writes results."""
    setup_logger(distributed_rank=comm.get_rank(), name="detectron2")
    if model is None:  # a launched worker (fresh interpreter): register again, build and load on its GPU
        register_coco_json(args.coco_json)
        register_config_datasets(cfg)
        model = build_model(cfg)
        load_eval_weights(model, cfg, args.weights, allow_missing=args.allow_missing_keys)
    else:
        model.to(cfg.MODEL.DEVICE)
    reports = {}
    for name in datasets:
        loader = build_detection_test_loader(cfg, name)
        evaluator = DetectionAPEvaluator(
            name, metric=cfg.TEST.AP_METRIC, iou=cfg.TEST.AP_IOU, coco_ap=args.coco_ap
        )
        results = inference_on_dataset(model, loader, evaluator)
        if comm.is_main_process() and evaluator.report is not None:
            print("\n" + format_ap_table(evaluator.report), flush=True)
            if args.coco_ap:
                c = evaluator.report["coco"]
                print(f"pycocotools: AP={c['AP']:.2f} AP50={c['AP50']:.2f} AP75={c['AP75']:.2f}", flush=True)
            reports[name] = dict(evaluator.report, results=results.get("bbox", {}))
    if comm.is_main_process() and args.output:
        atomic_write_json(
            args.output,
            dict(
                config_file=args.config_file,
                weights=args.weights,
                metric=cfg.TEST.AP_METRIC,
                iou_threshold=cfg.TEST.AP_IOU,
                protocol=protocol_text(cfg.TEST.AP_METRIC, cfg.TEST.AP_IOU, default_max_dets(cfg.TEST.AP_METRIC)),
                datasets=reports,
            ),
        )
        print(f"wrote {args.output}", flush=True)
    return reports


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="metaalign_det")
    logging.getLogger("metaalign_det").setLevel(logging.WARNING)  # the tables are printed, not logged
    try:
        cfg, datasets, model = setup(args)
    except (ToolError, WeightsMismatchError, FileNotFoundError) as e:
        fail(TOOL, e)
    if args.num_gpus == 1:
        return run(cfg, args, datasets, model)
    del model  # each launched process builds its own on its GPU
    launch(run, args.num_gpus, dist_url=args.dist_url, args=(cfg, args, datasets))


if __name__ == "__main__":
    main()
