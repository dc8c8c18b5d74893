"""The one place where tests start and stop multi-process gloo groups: :func:`run_in_process_group`.

Every multi-process test goes through it, so that start-up and teardown are the same, and deterministic,
everywhere:

- Start-up: the group meets through a ``file://`` store in a fresh directory under the test's tmp_path.
  No TCP port is chosen by the parent and bound later by rank 0 (another process could take it in
  between); gloo's own connections bind ports that the OS picks at bind time.
- Teardown: a rank that returned waits in a barrier for the other ranks -- so no process tears the group
  down while another still runs a collective -- then destroys the group and drops detectron2's cached
  handle to it (``comm._get_global_gloo_group`` is an ``lru_cache`` that keeps the destroyed group, and
  with it gloo's worker threads, alive until interpreter exit; their destruction during interpreter
  shutdown is what aborted a rank with "terminate called without an active exception"). The helper
  checks that gloo's threads are gone before the process exits.
- Failures: a rank that raises exits at once (its peers may be blocked in a collective, so it must not
  wait for them); torch's process context then terminates the other ranks and raises the failing rank's
  traceback in the test. A rank that dies by a signal fails the test too (exit code != 0).
- Results: ``fn``'s return value is pickled by its rank and returned to the test, one per rank.
"""
import datetime
import gc
import os
import pickle
import sys
import tempfile
from typing import Any, Callable, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["run_in_process_group"]

# Only guards against a deadlock (every rank waiting): a collective waits this long for the slowest rank
# before raising, instead of gloo's 30-minute default. Generous: two CPU processes on a shared machine.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


def run_in_process_group(fn: Callable[..., Any], tmp_path, *args, world_size: int = 2) -> List[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned CPU processes joined in one gloo group.

    ``fn`` must be a module-level function (spawn pickles it by name) and everything in ``args`` picklable.
    Each process uses one intra-op thread. Returns ``[fn's return value on rank 0, on rank 1, ...]``.
    Raises torch.multiprocessing's ProcessRaisedException (with the rank's traceback) or
    ProcessExitedException when a rank fails.
    """
    work_dir = tempfile.mkdtemp(prefix="process_group_", dir=str(tmp_path))
    init_file = os.path.join(work_dir, "store")  # must not exist yet: the FileStore creates it
    mp.start_processes(_rank_main, args=(fn, world_size, init_file, work_dir, args), nprocs=world_size,
                       join=True, start_method="spawn")
    results = []
    for rank in range(world_size):
        with open(_result_path(work_dir, rank), "rb") as f:
            results.append(pickle.load(f))
    return results


def _result_path(work_dir, rank):
    return os.path.join(work_dir, f"rank{rank}.pkl")


def _rank_main(rank, fn, world_size, init_file, work_dir, args):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=COLLECTIVE_TIMEOUT)
    # Not in a try/finally: after an exception the peers may sit in a collective this rank never joins, so
    # a barrier would hang; the parent terminates them instead.
    result = fn(rank, world_size, *args)
    with open(_result_path(work_dir, rank), "wb") as f:
        pickle.dump(result, f)
    dist.barrier()  # every rank has finished every collective of fn
    dist.destroy_process_group()
    _drop_detectron2_group_cache()
    gc.collect()
    left = _gloo_threads()
    if left:
        raise RuntimeError(f"rank {rank}: gloo threads still alive after destroy_process_group: {left}")


def _drop_detectron2_group_cache():
    comm = sys.modules.get("detectron2.utils.comm")
    cached = getattr(comm, "_get_global_gloo_group", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


def _gloo_threads():
    """Names of this process's gloo threads (Linux: /proc; elsewhere the check is not available)."""
    task_dir = "/proc/self/task"
    if not os.path.isdir(task_dir):
        return []
    names = []
    for tid in os.listdir(task_dir):
        try:
            with open(os.path.join(task_dir, tid, "comm")) as f:
                name = f.read().strip()
        except OSError:  # the thread ended while listing
            continue
        if name.startswith("gloo"):
            names.append(name)
    return names
