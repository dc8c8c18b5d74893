#!/usr/bin/env python3
"""Train (or evaluate) a domain-adaptive Faster R-CNN with detectron2's usual command line.

    python tools/train_net.py --config-file configs/quick_schedules/metaalign_fo_R18_FPN_synthetic.yaml
    python tools/train_net.py --config-file CFG --resume                 # continue from OUTPUT_DIR
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8 SOLVER.IMS_PER_BATCH 16 ...

Trailing KEY VALUE pairs override the config. Multi-GPU runs use detectron2's ``launch``.
Bad input (missing config file, unknown dataset or missing split, a bad key value, a missing weights file, a
CUDA config on a machine without CUDA) exits with one ``error:`` line, before the first iteration.
The console shows the run; the environment, config and model dumps are in OUTPUT_DIR/log.txt.
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import _toolstart  # noqa: E402  (stdlib only: the start-up line, library notices kept off the console)

_toolstart.begin("train_net.py")

# isort: split
import metaalign_det  # noqa: E402  (applies compat before detectron2 is imported)

# isort: split
from detectron2.engine import default_argument_parser, launch  # noqa: E402

from metaalign_det.cli import setup_cfg  # noqa: E402
from metaalign_det.engine import MetaAlignTrainer  # noqa: E402
from metaalign_det.engine.checkpoint import AtomicDetectionCheckpointer  # noqa: E402
from metaalign_det.engine.setup import setup_run  # noqa: E402
from metaalign_det.engine.trainer import check_device, check_eval_config, check_model_weights  # noqa: E402
from metaalign_det.evaluation import WeightsMismatchError, load_eval_weights  # noqa: E402

Trainer = MetaAlignTrainer


def setup(args):
    """cfg from the file + overrides, manifests registered, the device checked; then detectron2's
    default_setup steps (logging -- dumps to log.txt only --, config.yaml, seed)."""
    cfg = setup_cfg(args.config_file, args.opts)
    check_device(cfg)
    setup_run(cfg, args)
    metaalign_det.compat.log_applied()
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        check_eval_config(cfg)
        model = Trainer.build_model(cfg)
        checkpointer = AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if args.resume and checkpointer.has_checkpoint():
            path = checkpointer.get_checkpoint_file()
        else:
            if not cfg.MODEL.WEIGHTS:
                raise ValueError("--eval-only needs MODEL.WEIGHTS: the checkpoint to evaluate")
            check_model_weights(cfg.MODEL.WEIGHTS)
            path = cfg.MODEL.WEIGHTS
        # checked against the config; the EMA entry for EMA configs, as training evaluates it
        for warning in load_eval_weights(model, cfg, path).warnings:
            logging.getLogger("detectron2").warning(warning)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except (ValueError, KeyError, FileNotFoundError, FloatingPointError, WeightsMismatchError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
