"""Shared set-up of the engine tests: a toy pair, a quick cfg, an in-process trainer."""
import os

import metaalign_det  # noqa: F401
import metaalign_det.modeling  # noqa: F401
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from metaalign_det.engine import MetaAlignTrainer
from metaalign_det.cli import setup_cfg
from tests.toy_data import register_toy_pair

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = os.path.join(ROOT, "configs", "quick_schedules", "Base-quick-R18-FPN.yaml")


def quick_cfg(data_dir, out_dir, *opts, prefix="toy", deterministic=False):
    """Quick R18-FPN cfg on a registered toy pair (96x128 images, 2 boxes each).

    ``deterministic``: every anchor / ROI is used (no random subsampling) and no dropout, so that runs with
    different RNG streams (1 vs 2 processes) compute the same losses.
    """
    src, tgt = register_toy_pair(data_dir, prefix=prefix)
    base = ["DATASETS.TRAIN", f"('{src}',)", "DATASETS.TRAIN_TARGET", f"('{tgt}',)", "DATASETS.TEST", "()",
            "MODEL.ROI_HEADS.NUM_CLASSES", "3", "OUTPUT_DIR", str(out_dir), "INPUT.MIN_SIZE_TRAIN", "(96,)",
            "INPUT.MIN_SIZE_TEST", "96", "INPUT.RANDOM_FLIP", "none", "SOLVER.MAX_ITER", "4",
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
            "MODEL.DA_HEADS.INS_TARGET_PROPOSALS", "8"]
    if deterministic:
        base += ["MODEL.RPN.BATCH_SIZE_PER_IMAGE", "100000", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "100000",
                 "MODEL.DA_HEADS.INS_DROPOUT", "0.0"]
    return setup_cfg(QUICK, base + list(opts))


def build_trainer(cfg):
    """Seeded like tools/train_net.py (detectron2's default_setup seeds all RNGs with cfg.SEED)."""
    seed_all_rng(cfg.SEED)
    return MetaAlignTrainer(cfg)


def train(cfg, resume=False, hooks=()):
    trainer = build_trainer(cfg)
    trainer.register_hooks(list(hooks))
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def one_step(trainer, it=0):
    with EventStorage(it) as storage:
        trainer._trainer.iter = storage.iter = it
        trainer._trainer.run_step()
        return storage
