"""Two CPU processes (gloo) give the same parameters as one process with the same global batch.

detectron2 v0.6's ``launch`` asserts CUDA for more than one process, so the test starts its own processes;
the trainer averages gradients itself (metaalign_det.engine.distributed), which works on gloo and NCCL.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.engine.helpers import quick_cfg, train
from tests.toy_data import register_toy_pair


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _opts(mode):
    return ["META.MODE", mode, "SOLVER.MAX_ITER", "3", "META.JOINT_GRAD_COS_PERIOD", "2",
            "SOLVER.CHECKPOINT_PERIOD", "1000", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.TARGET_IMS_PER_BATCH", "2"]


def _worker(rank, world, port, data_dir, out_dir, mode, result_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        register_toy_pair(data_dir)
        # different init per rank on purpose: the trainer must broadcast rank 0's parameters
        cfg = quick_cfg(data_dir, out_dir, *_opts(mode), deterministic=True)
        torch.manual_seed(100 + rank)
        from detectron2.utils.env import seed_all_rng

        seed_all_rng(cfg.SEED + rank)
        from metaalign_det.engine import MetaAlignTrainer

        trainer = MetaAlignTrainer(cfg)
        if rank == 0:
            # the single-process reference starts from the same initial weights
            torch.save(trainer.model.state_dict(), result_file + ".init")
        dist.barrier()
        trainer.train()
        if rank == 0:
            torch.save(trainer.model.state_dict(), result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["none", "first_order"])
def test_two_processes_equal_one(tmp_path, mode):
    data_dir = tmp_path / "data"
    register_toy_pair(data_dir)  # generate the files once, before the workers start
    result = str(tmp_path / "ddp.pth")
    mp.start_processes(_worker, args=(2, _free_port(), data_dir, tmp_path / "ddp_out", mode, result),
                       nprocs=2, join=True, start_method="spawn")
    ddp = torch.load(result, weights_only=True)

    cfg = quick_cfg(data_dir, tmp_path / "single_out", *_opts(mode), deterministic=True)
    from metaalign_det.engine import MetaAlignTrainer

    trainer = MetaAlignTrainer(cfg)
    trainer.model.load_state_dict(torch.load(result + ".init", weights_only=True))
    trainer.train()
    single = trainer.model.state_dict()
    moved = 0
    init = torch.load(result + ".init", weights_only=True)
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-5, msg=k)
        moved += int(not torch.equal(v, init[k]))
    assert moved > 10  # the comparison is about trained weights, not untouched ones


def _nan_worker(rank, world, port, data_dir, out_dir, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        register_toy_pair(data_dir)
        cfg = quick_cfg(data_dir, out_dir, *_opts("none"), deterministic=True)
        from metaalign_det.engine import MetaAlignTrainer

        trainer = MetaAlignTrainer(cfg)
        step = trainer._trainer
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
            outcome = "trained"
        except FloatingPointError as e:
            unchanged = all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
            outcome = f"raised at iter {step.iter}; weights unchanged: {unchanged}; {e}"
        with open(os.path.join(result_dir, f"rank{rank}.txt"), "w") as f:
            f.write(outcome)
    finally:
        dist.destroy_process_group()


def test_non_finite_gradient_on_one_process_stops_every_process(tmp_path):
    """The finite check reads the all-reduced gradients: every process raises before the update together
    (a lone raise would leave the other waiting in the next collective)."""
    data_dir = tmp_path / "data"
    register_toy_pair(data_dir)
    mp.start_processes(_nan_worker, args=(2, _free_port(), data_dir, tmp_path / "out", str(tmp_path)),
                       nprocs=2, join=True, start_method="spawn")
    for rank in (0, 1):
        outcome = (tmp_path / f"rank{rank}.txt").read_text()
        assert outcome.startswith("raised at iter 0; weights unchanged: True;"), (rank, outcome)
        assert "non-finite MetaAlign gradient at iteration 0" in outcome
