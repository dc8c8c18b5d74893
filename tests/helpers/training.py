"""In-process trainers for the engine tests (configs come from :mod:`tests.helpers.configs`)."""
import metaalign_det  # noqa: F401
import metaalign_det.modeling  # noqa: F401

# isort: split
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from metaalign_det.engine import MetaAlignTrainer


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
        trainer.step_trainer.iter = storage.iter = it
        trainer.step_trainer.run_step()
        trainer.step_trainer.flush_metrics()  # metrics are read from the device on log steps only
        return storage
