#!/usr/bin/env python3
"""How far apart are the two domains in a detector's features? Proxy A-distance per checkpoint, plus the
agreement of the alignment and detection gradients.

  python tools/analyze_alignment.py --config-file configs/demo/da_joint_R18_FPN.yaml \\
      --weights output/a/model_final.pth output/b/model_final.pth --output alignment.json
  python tools/analyze_alignment.py --config-file CFG --weights W.pth \\
      --source-dataset synthetic_clear_test --target-dataset synthetic_foggy_test --max-images 200

For each checkpoint and each representation (``pooled``: backbone levels averaged over the image;
``locations``: per-location backbone features, as the image-level discriminator sees them; ``roi``: box-head
features of the top RPN proposals, as the instance-level discriminator sees them) a fresh linear domain
classifier is trained on half of the images of each domain and tested on the other half (2-fold, split by
image): PAD = 2(1 - 2 error); 0 = indistinguishable, 2 = perfectly separable. ``grad_cos`` is the cosine of
the alignment and detection gradients at the checkpoint on ``--grad-batches`` training pairs (needs a config
with a DA head; the heads of a checkpoint without them start from their init).

Datasets default to the config's first DATASETS.TRAIN (source) and DATASETS.TRAIN_TARGET (else TEST) name; no
label is read. Any registered pair works (builtin names, DATASETS.PAIR_MANIFESTS, --coco-json).
Bad input exits with status 2 and one line naming what is wrong.
"""
import argparse
import logging
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # imported, not run: tools/ for _toolstart
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _toolstart  # noqa: E402  (stdlib only: the start-up line, library notices kept off the console)

_toolstart.begin("analyze_alignment.py")

# isort: split
import metaalign_det  # noqa: E402,F401  (compat first; registers models and datasets)

# isort: split
import torch  # noqa: E402
from detectron2.data import DatasetMapper  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from metaalign_det.analysis import proxy_a_distance  # noqa: E402
from metaalign_det.analysis.features import REPRESENTATIONS, domain_features, gradient_agreement  # noqa: E402
from metaalign_det.cli import (  # noqa: E402
    ToolError,
    check_datasets,
    fail,
    load_config,
    load_dataset_dicts,
    register_coco_json,
    split_config_overrides,
)
from metaalign_det.evaluation import WeightsMismatchError, load_eval_weights  # noqa: E402
from metaalign_det.utils.io import atomic_write_json  # noqa: E402

TOOL = "analyze_alignment.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="YAML")
    p.add_argument("--weights", required=True, nargs="+", metavar="PTH", help="one or more checkpoints")
    p.add_argument("--source-dataset", metavar="NAME", help="default: the config's first DATASETS.TRAIN")
    p.add_argument("--target-dataset", metavar="NAME",
                   help="default: the config's first DATASETS.TRAIN_TARGET, else its first DATASETS.TEST")
    p.add_argument("--max-images", type=int, default=200, help="images per domain (a seeded random subset)")
    p.add_argument("--levels", nargs="+", metavar="FEATURE",
                   help="backbone outputs for 'pooled'/'locations' (default: MODEL.DA_HEADS.IMG_IN_FEATURES)")
    p.add_argument("--rois-per-image", type=int, default=32)
    p.add_argument("--locations-per-image", type=int, default=16)
    p.add_argument("--grad-batches", type=int, default=4, help="training pairs for grad_cos (0 = skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--coco-json", action="append", default=[], metavar="NAME=JSON:IMAGE_ROOT")
    p.add_argument("--output", metavar="JSON", help="write every number here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = p.parse_args(argv)
    args.weights, args.opts = split_config_overrides(args.weights, args.opts)
    if not args.weights:
        p.error("--weights needs at least one checkpoint")
    for name in ("max_images", "rois_per_image", "locations_per_image", "grad_batches"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.max_images < 4:
        p.error("--max-images must be >= 4 (the classifier is trained and tested on halves of the images)")
    return args


def _setup(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = cfg.MODEL.DEVICE if torch.cuda.is_available() else "cpu"
    cfg.freeze()
    register_coco_json(args.coco_json)  # the config's DATASETS.PAIR_MANIFESTS: registered by load_config
    source = args.source_dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None)
    target = args.target_dataset or (cfg.DATASETS.TRAIN_TARGET[0] if cfg.DATASETS.TRAIN_TARGET else
                                     (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None))
    if not source or not target:
        raise ToolError("no source/target dataset: pass --source-dataset and --target-dataset")
    check_datasets([source, target])
    for name in (source, target):
        load_dataset_dicts(name)  # unreadable or empty: one line now, not a traceback mid-analysis
    for w in args.weights:
        if not os.path.isfile(w):
            raise ToolError(f"--weights {w}: no such file")
    levels = list(args.levels or cfg.MODEL.DA_HEADS.IMG_IN_FEATURES)
    return cfg, source, target, levels


def _batches(cfg, name, max_images, seed, batch_size=4):
    dicts = list(load_dataset_dicts(name))
    random.Random(seed).shuffle(dicts)
    dicts = [{k: v for k, v in d.items() if k != "annotations"} for d in dicts[:max_images]]
    mapper = DatasetMapper(cfg, is_train=False)
    for i in range(0, len(dicts), batch_size):
        yield [mapper(d) for d in dicts[i:i + batch_size]]


def analyze(cfg, weights, source, target, levels, args):
    """PAD per representation and grad_cos for one checkpoint; returns a dict. The same ``--seed`` gives the
    same numbers, whatever the checkpoint's place in ``--weights``: every RNG (python, numpy -- the training
    loader's random flip --, torch -- heads a checkpoint lacks keep their initialisation) is seeded here."""
    seed_all_rng(args.seed)
    model = build_model(cfg)
    # EMA configs: the evaluated model is the checkpoint's "ema" entry; raises on a checkpoint that does not fit
    keys = load_eval_weights(model, cfg, weights).keys
    # a checkpoint trained without DA heads (source-only): the heads keep their initialisation here
    heads_from_init = any(k.startswith(("da_img_head.", "da_ins_head.")) for k in model.state_dict()) and \
        not any(k.startswith(("da_img_head.", "da_ins_head.")) for k in keys)
    t0 = time.perf_counter()
    feats = {}
    for dom, name in (("source", source), ("target", target)):
        feats[dom] = domain_features(model, _batches(cfg, name, args.max_images, args.seed), levels,
                                     args.rois_per_image, args.locations_per_image, args.seed)
    pad = {}
    for rep in REPRESENTATIONS:
        if rep in feats["source"] and rep in feats["target"]:
            (xs, gs), (xt, gt) = feats["source"][rep], feats["target"][rep]
            pad[rep] = proxy_a_distance(xs, xt, gs, gt, seed=args.seed).as_dict()
    cos = None
    if args.grad_batches > 0 and cfg.DATASETS.TRAIN_TARGET:
        from metaalign_det.data.paired_loader import build_paired_train_loader

        pairs = iter(build_paired_train_loader(cfg))
        cos = gradient_agreement(model, pairs, args.grad_batches, seed=args.seed)
    return {
        "weights": weights,
        "pad": pad,
        "grad_cos": None if not cos else {"mean": statistics.mean(cos), "values": cos,
                                          "da_heads_from_init": heads_from_init},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def format_table(results, source, target):
    head = "| checkpoint | " + " | ".join(f"PAD {r}" for r in REPRESENTATIONS) + " | grad_cos |"
    lines = [f"Proxy A-distance, {source} (source) vs {target} (target): 0 = indistinguishable, "
             "2 = separable", "", head, "|---" * (len(REPRESENTATIONS) + 2) + "|"]
    for r in results:
        cells = [f"{r['pad'][k]['pad']:.3f}" if k in r["pad"] else "-" for k in REPRESENTATIONS]
        cos = f"{r['grad_cos']['mean']:+.3f}" if r["grad_cos"] else "-"
        lines.append(f"| {r['weights']} | " + " | ".join(cells) + f" | {cos} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="metaalign_det")
    logging.getLogger("metaalign_det").setLevel(logging.WARNING)
    try:
        cfg, source, target, levels = _setup(args)
        results = [analyze(cfg, w, source, target, levels, args) for w in args.weights]
    except (ToolError, WeightsMismatchError, FileNotFoundError, ValueError) as e:
        fail(TOOL, e)
    print(format_table(results, source, target), flush=True)
    if args.output:
        atomic_write_json(args.output, {
            "config_file": args.config_file, "source_dataset": source, "target_dataset": target,
            "levels": levels, "max_images": args.max_images, "rois_per_image": args.rois_per_image,
            "locations_per_image": args.locations_per_image, "grad_batches": args.grad_batches,
            "seed": args.seed, "checkpoints": results,
        })
        print(f"wrote {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
