#!/usr/bin/env python3
"""Train (or evaluate) a domain-adaptive Faster R-CNN with detectron2's usual command line.

    python tools/train_net.py --config-file configs/quick_schedules/metaalign_fo_R18_FPN_synthetic.yaml
    python tools/train_net.py --config-file CFG --resume                 # continue from OUTPUT_DIR
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8 SOLVER.IMS_PER_BATCH 16 ...

Trailing KEY VALUE pairs override the config. Multi-GPU runs use detectron2's ``launch``.
Bad input (missing config file, unknown dataset or missing split, a bad key value, a missing weights file, a
CUDA config or ``--num-gpus N`` on a machine without CUDA, an OUTPUT_DIR that cannot be written or that another
run holds, an unreadable checkpoint to resume from) exits with status 2 and one ``error:`` line, before the
first iteration; so does a checkpoint that cannot be saved (disk full) during training. Ctrl-C exits with
status 1 and one line naming the checkpoint ``--resume`` continues from; so does SIGTERM (``kill``, a job
scheduler's preemption), which ends the run as Ctrl-C does instead of at once (the run lock released). A
checkpoint being written when either arrives is completed first.
The console shows the run; the environment, config and model dumps are in OUTPUT_DIR/log.txt.
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # imported, not run: tools/ for _toolstart
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _toolstart  # noqa: E402  (stdlib only: the start-up line, library notices kept off the console)

_toolstart.begin("train_net.py")

# isort: split
import metaalign_det  # noqa: E402  (applies compat before detectron2 is imported)

# isort: split
from detectron2.engine import default_argument_parser, launch  # noqa: E402

from metaalign_det.cli import register_config_datasets, setup_cfg  # noqa: E402
from metaalign_det.engine import MetaAlignTrainer  # noqa: E402
from metaalign_det.engine.checkpoint import AtomicDetectionCheckpointer  # noqa: E402
from metaalign_det.engine.output_dir import check_output_dir  # noqa: E402
from metaalign_det.engine.run_lock import RunLock  # noqa: E402
from metaalign_det.engine.setup import reported_error, setup_run  # noqa: E402
from metaalign_det.engine.trainer import (  # noqa: E402
    TrainingInterrupted,
    check_device,
    check_eval_config,
    check_model_weights,
    check_num_gpus,
    check_solver_config,
    launcher_interrupted_message,
)
from metaalign_det.evaluation import load_eval_weights  # noqa: E402
from metaalign_det.utils.interrupts import sigterm_as_ctrl_c  # noqa: E402

Trainer = MetaAlignTrainer


def build_cfg(args):
    """cfg from the file + overrides (manifests registered), checked before anything runs: the device and
    OUTPUT_DIR (created, and a file can be written into it), the schedule's numbers (training only)."""
    cfg = setup_cfg(args.config_file, args.opts)
    check_device(cfg)
    if not args.eval_only:  # before launch: with N processes each would stop with its own traceback
        check_solver_config(cfg, args.num_gpus * args.num_machines)
    check_output_dir(cfg.OUTPUT_DIR)
    return cfg


def setup(args, cfg=None):
    """``cfg`` (built here if None; a launched worker registers its manifests again); then detectron2's
    default_setup steps (logging -- dumps to log.txt only --, config.yaml, seed)."""
    if cfg is None:
        cfg = build_cfg(args)
    else:
        register_config_datasets(cfg)
    setup_run(cfg, args)
    metaalign_det.compat.log_applied()
    return cfg


def main(args, cfg=None):
    cfg = setup(args, cfg)
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
    """Exit status: 0 done, 2 one ``error:`` line (bad input, a run that cannot go on), 1 interrupted."""
    args = default_argument_parser().parse_args(argv)
    sigterm_as_ctrl_c()
    lock, launched = None, False
    try:
        check_num_gpus(args.num_gpus)
        cfg = build_cfg(args)
        if args.machine_rank == 0:  # one run per OUTPUT_DIR, held by the process that launches rank 0
            lock = RunLock(cfg.OUTPUT_DIR)
            notice = lock.acquire()
            if notice:
                print(f"warning: {notice}", file=sys.stderr, flush=True)
        launched = True
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args, cfg))
    except TrainingInterrupted as e:
        print(e.args[0] if e.args else "interrupted", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        if args.eval_only:
            line = "interrupted"
        elif launched and args.num_gpus * args.num_machines > 1:  # the launcher of several training processes
            line = launcher_interrupted_message(cfg.OUTPUT_DIR)
        else:
            line = "interrupted before training started"
        print(line, file=sys.stderr, flush=True)
        return 1
    except Exception as e:
        error = reported_error(e)
        if error is None:
            raise  # a bug: its traceback
        msg = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {' '.join(str(msg).split())}", file=sys.stderr, flush=True)
        return 2
    finally:
        if lock is not None:
            lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
