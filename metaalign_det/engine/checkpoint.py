"""Checkpoints written atomically: a crash while saving never leaves a truncated ``.pth`` or a
``last_checkpoint`` tag pointing at one; never with non-finite weights; and a file that is not a checkpoint
is one error naming it, not a pickle traceback."""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicDetectionCheckpointer"]


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose ``save`` / ``tag_last_checkpoint`` write a temp file and rename it.

    ``save`` refuses (FloatingPointError) a model with a non-finite floating-point weight or buffer: the
    trainer stops a diverged run before its checkpoint hook, this is the last line of defence.
    """

    def save(self, name: str, **kwargs) -> None:
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
        tmp = save_file + ".tmp"
        self.logger.info("Saving checkpoint to {}".format(save_file))
        with open(tmp, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, save_file)
        self.tag_last_checkpoint(os.path.basename(save_file))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        tmp = save_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(last_filename_basename)
        os.replace(tmp, save_file)

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except Exception as e:  # corrupt / foreign file: one line naming it, not a pickle traceback
            first = " ".join(str(e).split())[:200]
            raise ValueError(f"{filename}: cannot be read as a checkpoint ({type(e).__name__}: {first})") from e
