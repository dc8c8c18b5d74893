"""The global random streams a training run draws from (torch CPU, numpy, CUDA), as checkpointable state:
restored on resume with one process so that kill-and-resume reproduces the uninterrupted run
(docs/training.md says when that holds)."""
from typing import Any, Dict

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]


def capture_rng_state() -> Dict[str, Any]:
    """``{"torch": ByteTensor, "numpy": tuple of tensors and numbers, "cuda": list of ByteTensors or None}``:
    only tensors and numbers, so that ``torch.load(weights_only=True)`` reads it back."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(rng: Dict[str, Any]) -> None:
    """Set the streams :func:`capture_rng_state` returned (CUDA only where CUDA is available here)."""
    torch.set_rng_state(rng["torch"])
    np.random.set_state(_numpy_state_from_tensors(rng["numpy"]))
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _numpy_state_to_tensors(state):
    # torch.load defaults to weights_only=True (torch >= 2.6), which refuses numpy arrays in a checkpoint.
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _numpy_state_from_tensors(state):
    name, keys, pos, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
