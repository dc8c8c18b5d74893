"""Deferred step metrics: a training step's losses and statistics stay on the device until a log step, where
every pending step is read in ONE device->host copy and put into detectron2's EventStorage under the
iteration it was measured at -- so the writers see the same series as if every step had written its own,
at one host sync per ``SOLVER.LOG_PERIOD`` instead of one per step.
"""
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .. import compat

__all__ = ["DeferredStepMetrics"]


class DeferredStepMetrics:
    """The pending ``(iteration, losses, stats, data_time)`` records of one process.

    ``losses``: name -> 0-d tensor (detached) or float; written as ``<name>`` with their sum ``total_loss``,
    averaged over processes. ``stats``: name -> 0-d tensor, float or string; numeric finite values are written
    as ``meta/<name>`` (or under their own name when it has a ``/``, e.g. ``da/img_acc_source``); bool tensors
    are flags, not metrics. ``data_time`` in seconds (the max over processes is written).
    """

    def __init__(self) -> None:
        self._pending: List[Tuple[int, Dict[str, Any], Dict[str, Any], float]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, iteration: int, losses: Dict[str, Any], stats: Dict[str, Any], data_time: float) -> None:
        """Keep one step's values (on the device) until :meth:`flush`."""
        self._pending.append((int(iteration), dict(losses), dict(stats), float(data_time)))

    def flush(self, collective: bool = True) -> None:
        """Read the pending steps' losses and stats (one device->host copy) and put them into the current
        EventStorage under their own iterations (one ``comm.gather`` for all of them; ``collective=False``
        skips it and writes this process's values, for use after a failure, when another process may not
        join). Non-finite or non-numeric stats are left out (order/direction/hvp are strings; grad_cos is
        NaN on steps that do not compute it)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        tensors, slots = [], []
        for i, (_, losses, stats, _) in enumerate(pending):
            for group, values in ((0, losses), (1, stats)):
                for k, v in values.items():
                    if torch.is_tensor(v) and v.dtype != torch.bool:  # flags are not metrics
                        slots.append((i, group, k))
                        tensors.append(v.detach().reshape(()).to(torch.float64))
        read = {}
        if tensors:
            dev = tensors[0].device
            read = dict(zip(slots, torch.stack([t.to(dev) for t in tensors]).tolist()))
        records = []
        for i, (it, losses, stats, data_time) in enumerate(pending):
            metrics = {k: read.get((i, 0, k), v) for k, v in losses.items()}
            meta = {}
            for k, v in stats.items():
                v = read.get((i, 1, k), v)
                numeric = isinstance(v, (int, float)) and not isinstance(v, bool)  # flags stay tensors
                if numeric and np.isfinite(v):
                    meta[k if "/" in k else f"meta/{k}"] = float(v)
            records.append((it, {k: float(v) for k, v in metrics.items()}, meta, data_time))
        all_records = comm.gather(records) if collective else [records]
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        for j, (it, _, _, _) in enumerate(records):  # each record at the iteration it was measured
            per_process = [r[j] for r in all_records]
            loss_means = {k: float(np.mean([x[1][k] for x in per_process])) for k in per_process[0][1]}
            compat.put_scalars_at(storage, it, data_time=max(x[3] for x in per_process),
                                  total_loss=sum(loss_means.values()), **loss_means)
            meta_keys = set().union(*(x[2].keys() for x in per_process))
            meta_means = {k: float(np.mean([x[2][k] for x in per_process if k in x[2]])) for k in meta_keys}
            if meta_means:
                compat.put_scalars_at(storage, it, smoothing_hint=False, **meta_means)

