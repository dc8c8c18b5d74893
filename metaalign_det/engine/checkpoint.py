"""Checkpoints written atomically: a crash while saving never leaves a truncated ``.pth`` or a
``last_checkpoint`` tag pointing at one; never with non-finite weights; and a file that is not a checkpoint
is one error naming it, not a pickle traceback."""
import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.io import atomic_open, atomic_write_bytes

__all__ = ["AtomicDetectionCheckpointer"]


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose ``save`` / ``tag_last_checkpoint`` go through
    :func:`metaalign_det.utils.io.atomic_open` (temp file, fsync, rename; mode 0644).

    ``save`` refuses (FloatingPointError) a model with a non-finite floating-point weight or buffer: the
    trainer stops a diverged run before its checkpoint hook, this is the last line of defence.
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        bad = [k for k, v in data["model"].items()
               if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            shown = ", ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
            raise FloatingPointError(
                f"not saving checkpoint {name}.pth: {len(bad)} model tensor(s) are non-finite ({shown}); "
                f"the last checkpoint is intact"
            )
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to {}".format(save_file))
        with atomic_open(save_file) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(os.path.basename(save_file))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_bytes(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename.encode("utf-8"))

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except Exception as e:  # corrupt / foreign file: one line naming it, not a pickle traceback
            first = " ".join(str(e).split())[:200]
            raise ValueError(f"{filename}: cannot be read as a checkpoint ({type(e).__name__}: {first})") from e
