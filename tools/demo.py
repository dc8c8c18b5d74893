#!/usr/bin/env python3
"""`make demo`: domain adaptation on the generated demo pair, end to end on a CPU in minutes.

1. generates the synthetic clear -> foggy pair on first use (seeded, ~15 s; reused afterwards);
2. trains the detector of --config-file (default: MetaAlign first-order on R18-FPN, configs/demo/) on the
   labelled clear images and the unlabelled foggy ones;
3. evaluates it on the target val (synthetic_foggy_val) and the source val, printing per-class AP50 tables.

    python tools/demo.py [--config-file configs/demo/metaalign_R18_FPN.yaml] [KEY VALUE ...]

A run that was interrupted continues from its last checkpoint (detectron2 --resume semantics); a finished one
is only re-evaluated. Everything lands in OUTPUT_DIR (default output/demo/metaalign_fo).
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import metaalign_det  # noqa: E402
import metaalign_det.data  # noqa: E402,F401  (registers the demo pair)
import torch  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.engine import default_setup  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from metaalign_det.engine import MetaAlignTrainer  # noqa: E402
from metaalign_det.cli import setup_cfg  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", default=os.path.join(ROOT, "configs", "demo", "metaalign_R18_FPN.yaml"))
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    cfg = setup_cfg(args.config_file, args.opts)
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TRAIN_TARGET) + list(cfg.DATASETS.TEST):
        DatasetCatalog.get(name)  # the first call generates the pair (once)
    print(f"[demo] data ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    default_setup(cfg, argparse.Namespace(config_file=args.config_file, opts=args.opts, eval_only=False))
    setup_logger(output=cfg.OUTPUT_DIR, name="metaalign_det")
    trainer = MetaAlignTrainer(cfg)
    trainer.resume_or_load(resume=True)
    if trainer.start_iter < cfg.SOLVER.MAX_ITER:
        trainer.train()
    t1 = time.perf_counter()
    results = MetaAlignTrainer.test(cfg, trainer.model)
    if "bbox" in results:  # detectron2 unwraps the dict when there is one test set
        results = {cfg.DATASETS.TEST[0]: results}
    t2 = time.perf_counter()
    print(f"\n[demo] {cfg.META.MODE} training: {t1 - t0:.0f} s, evaluation: {t2 - t1:.0f} s; "
          f"output in {cfg.OUTPUT_DIR}")
    for name, res in results.items():
        ap = res["bbox"]
        per_class = ", ".join(f"{k[5:]} {v:.1f}" for k, v in ap.items() if k.startswith("AP50-"))
        print(f"[demo] AP50 ({cfg.TEST.AP_METRIC}) on {name}: {ap['AP50']:.1f}  ({per_class})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
