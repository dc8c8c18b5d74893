"""Count the Python-level host<->device synchronisations of a piece of code, on any device (CPU included).

On a GPU, every call that turns a tensor into a Python value -- ``.item()``, ``float(t)``, ``int(t)``,
``bool(t)`` (``if t:``), ``.tolist()``, ``.numpy()``, ``.cpu()`` -- waits for all queued kernels to finish,
so the host stops queueing work and the GPU then idles while Python catches up. torch's own
``torch.cuda.set_sync_debug_mode`` only works on CUDA; this counter works on CPU too, so a test can pin the
number of such calls in a training step without a GPU. It sees Python-level conversions only, not the syncs
that torch ops make internally (``nonzero``, boolean-mask indexing): those are the model's, and on CUDA
``set_sync_debug_mode("warn")`` lists them.

Usage::

    with HostSyncCounter() as syncs:
        with syncs.scope("model"):      # attribute these calls to "model" instead of "step"
            ...
        ...
    syncs.counts   # {"step": 2, "model": 14}
    syncs.sites    # [(scope, method, "file.py:123"), ...] (the first frame outside torch)
"""
import contextlib
import os
import sys
import threading
from collections import Counter
from typing import List, Tuple

import torch

__all__ = ["HostSyncCounter", "SYNC_METHODS"]

# Methods of torch.Tensor that hand a value to Python. ``__format__``/``__array__`` go through item()/numpy().
SYNC_METHODS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__index__", "__bool__")

_TORCH_DIR = os.path.dirname(torch.__file__)


class HostSyncCounter:
    """Context manager that patches :data:`SYNC_METHODS` on ``torch.Tensor`` and counts their calls.

    Calls are attributed to the innermost active :meth:`scope` (default ``"step"``). Nested calls (a
    patched method calling another) count once. Counting is per process and meant for tests and
    benchmarks: not thread-safe beyond the guard against re-entry on the same thread.
    """

    def __init__(self, default_scope: str = "step"):
        self.counts: Counter = Counter()
        self.sites: List[Tuple[str, str, str]] = []
        self._scopes = [default_scope]
        self._saved = {}
        self._local = threading.local()

    @contextlib.contextmanager
    def scope(self, name: str):
        self._scopes.append(name)
        try:
            yield self
        finally:
            self._scopes.pop()

    def total(self) -> int:
        return sum(self.counts.values())

    def _wrap(self, name, original):
        counter = self

        def wrapper(tensor, *args, **kwargs):
            if getattr(counter._local, "busy", False):
                return original(tensor, *args, **kwargs)
            counter._local.busy = True
            try:
                scope = counter._scopes[-1]
                counter.counts[scope] += 1
                counter.sites.append((scope, name, _caller()))
                return original(tensor, *args, **kwargs)
            finally:
                counter._local.busy = False

        wrapper.__name__ = name
        return wrapper

    def __enter__(self):
        for name in SYNC_METHODS:
            # the attribute as torch.Tensor resolves it (most live on the C base class)
            original = getattr(torch.Tensor, name)
            self._saved[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, self._wrap(name, original))
        return self

    def __exit__(self, *exc):
        for name, own in self._saved.items():
            if own is None:
                delattr(torch.Tensor, name)  # back to the base class's method
            else:
                setattr(torch.Tensor, name, own)
        self._saved.clear()
        return False


def _caller() -> str:
    """``file:line`` of the first frame outside torch and this module."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_TORCH_DIR) and path != __file__:
            if "site-packages" + os.sep in path:
                path = path.split("site-packages" + os.sep, 1)[1]
            elif not path.startswith("<"):
                path = os.path.relpath(path)
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"
