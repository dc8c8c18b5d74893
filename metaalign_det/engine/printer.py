"""The console line of a training run: detectron2's ``CommonMetricPrinter`` plus what a domain-adaptation
run needs at a glance -- the gradient agreement ``meta/grad_cos`` and who is winning the adversarial game
(the discriminators' accuracies ``da/*``).

One line per ``SOLVER.LOG_PERIOD``, e.g.::

    eta: 0:03:10  iter: 199  total_loss: 1.62  loss_cls: 0.21  ...  grad_cos: +0.031  da img src/tgt: 0.62/0.58
    ins src/tgt: 0.55/0.51  time: 0.61  data_time: 0.006  lr: 0.01

Values are medians over the last ``window_size`` logged values (as detectron2's printer); a series that
was never logged (no target batch, no meta step) is left out.
"""
import datetime
import logging
import time
from typing import Optional

import torch
from detectron2.utils.events import EventWriter, get_event_storage

__all__ = ["TrainingMetricPrinter"]


class TrainingMetricPrinter(EventWriter):
    """Print losses, ``meta/grad_cos``, ``da/*`` accuracies, time and lr on one console line.

    Args:
        max_iter: total iterations, for the ETA (None: no ETA).
        window_size: median window for the printed values, in logged values.
    """

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20) -> None:
        self.logger = logging.getLogger("metaalign_det.train")
        self.max_iter = max_iter
        self.window_size = window_size
        self.last_write = None  # (iteration, time.perf_counter()) of the previous line

    def _median(self, storage, key) -> Optional[float]:
        try:
            return storage.history(key).median(self.window_size)
        except KeyError:
            return None

    def _eta(self, storage) -> str:
        if self.max_iter is None:
            return ""
        iteration = storage.iter
        now = time.perf_counter()
        try:
            per_iter = storage.history("time").median(1000)
        except KeyError:
            per_iter = None
            if self.last_write is not None and iteration > self.last_write[0]:
                per_iter = (now - self.last_write[1]) / (iteration - self.last_write[0])
        self.last_write = (iteration, now)
        if per_iter is None:
            return ""
        seconds = per_iter * max(self.max_iter - iteration - 1, 0)
        storage.put_scalar("eta_seconds", seconds, smoothing_hint=False)
        return f"eta: {datetime.timedelta(seconds=int(seconds))}  "

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self.max_iter:  # training finished: nothing new to report
            return
        histories = storage.histories()
        parts = []
        total = self._median(storage, "total_loss")
        if total is not None:
            parts.append(f"total_loss: {total:.4g}")
        for k in sorted(h for h in histories if h.startswith("loss_")):
            parts.append(f"{k}: {self._median(storage, k):.4g}")
        cos = self._median(storage, "meta/grad_cos")
        if cos is not None:
            parts.append(f"grad_cos: {cos:+.3f}")
        for level in ("img", "ins"):
            src = self._median(storage, f"da/{level}_acc_source")
            tgt = self._median(storage, f"da/{level}_acc_target")
            if src is not None and tgt is not None:
                parts.append(f"da {level} acc src/tgt: {src:.2f}/{tgt:.2f}")
        pseudo = self._median(storage, "teacher/pseudo_per_image")  # teacher-student runs (docs/teacher.md)
        if pseudo is not None:
            parts.append(f"pseudo/img: {pseudo:.2f}")
        iter_time = self._median(storage, "time")
        if iter_time is not None:
            parts.append(f"time: {iter_time:.4f}")
        data_time = self._median(storage, "data_time")
        if data_time is not None:
            parts.append(f"data_time: {data_time:.4f}")
        try:
            parts.append(f"lr: {storage.history('lr').latest():.5g}")
        except KeyError:
            pass
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            parts.append(f"max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M")
        self.logger.info(f"{self._eta(storage)}iter: {iteration}  " + "  ".join(parts))
