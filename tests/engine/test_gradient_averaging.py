"""Our own data-parallel gradient averaging (metaalign_det.engine.distributed, not DDP): two CPU processes
(gloo) give the same parameters as one process with the same global batch, in every META.MODE.

detectron2 v0.6's ``launch`` asserts CUDA for more than one process, so the test starts its own processes
(tests.helpers.distributed); the trainer averages gradients itself, which works on gloo and NCCL.
"""
import pytest
import torch
import torch.distributed as dist

from tests.helpers.configs import quick_cfg
from tests.helpers.distributed import run_in_process_group
from tests.toy_data import register_toy_pair


def _opts(mode):
    return ["META.MODE", mode, "SOLVER.MAX_ITER", "3", "META.JOINT_GRAD_COS_PERIOD", "2",
            "SOLVER.CHECKPOINT_PERIOD", "1000", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.TARGET_IMS_PER_BATCH", "2"]


def _worker(rank, world, data_dir, out_dir, mode):
    """Rank 0 returns (initial state dict, trained state dict); rank 1 returns None."""
    register_toy_pair(data_dir)
    # different init per rank on purpose: the trainer must broadcast rank 0's parameters
    cfg = quick_cfg(data_dir, out_dir, *_opts(mode), deterministic=True)
    torch.manual_seed(100 + rank)
    from detectron2.utils.env import seed_all_rng

    seed_all_rng(cfg.SEED + rank)
    from metaalign_det.engine import MetaAlignTrainer

    trainer = MetaAlignTrainer(cfg)
    # the single-process reference starts from the same initial weights
    init = {k: v.clone() for k, v in trainer.model.state_dict().items()} if rank == 0 else None
    dist.barrier()
    trainer.train()
    return (init, trainer.model.state_dict()) if rank == 0 else None


@pytest.mark.parametrize("mode", ["none", "first_order", "second_order"])
def test_two_processes_equal_one(tmp_path, mode):
    data_dir = tmp_path / "data"
    register_toy_pair(data_dir)  # generate the files once, before the workers start
    (init, ddp), rank1 = run_in_process_group(_worker, tmp_path, data_dir, tmp_path / "ddp_out", mode)
    assert rank1 is None

    cfg = quick_cfg(data_dir, tmp_path / "single_out", *_opts(mode), deterministic=True)
    from metaalign_det.engine import MetaAlignTrainer

    trainer = MetaAlignTrainer(cfg)
    trainer.model.load_state_dict(init)
    trainer.train()
    single = trainer.model.state_dict()
    moved = 0
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-5, msg=k)
        moved += int(not torch.equal(v, init[k]))
    assert moved > 10  # the comparison is about trained weights, not untouched ones


def _nan_worker(rank, world, data_dir, out_dir):
    """Returns this rank's outcome as one line of text."""
    register_toy_pair(data_dir)
    cfg = quick_cfg(data_dir, out_dir, *_opts("none"), deterministic=True)
    from metaalign_det.engine import MetaAlignTrainer

    trainer = MetaAlignTrainer(cfg)
    step = trainer.step_trainer
    original = step.compute_gradients

    def poisoned(source, target):
        grads, stats, losses = original(source, target)
        if rank == 1:  # only this process overflows; rank 0's own gradients are finite
            next(iter(grads.values())).view(-1)[0] = float("nan")
            stats["finite"] = False
        return grads, stats, losses

    step.compute_gradients = poisoned
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    try:
        trainer.train()
        return "trained"
    except FloatingPointError as e:
        unchanged = all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
        return f"raised at iter {step.iter}; weights unchanged: {unchanged}; {e}"


def test_non_finite_gradient_on_one_process_stops_every_process(tmp_path):
    """The finite check reads the all-reduced gradients: every process raises before the update together
    (a lone raise would leave the other waiting in the next collective)."""
    data_dir = tmp_path / "data"
    register_toy_pair(data_dir)
    outcomes = run_in_process_group(_nan_worker, tmp_path, data_dir, tmp_path / "out")
    for rank in (0, 1):
        outcome = outcomes[rank]
        assert outcome.startswith("raised at iter 0; weights unchanged: True;"), (rank, outcome)
        assert "non-finite MetaAlign gradient at iteration 0" in outcome
