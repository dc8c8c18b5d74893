"""Checkpoints written atomically: a crash while saving never leaves a truncated ``.pth`` or a
``last_checkpoint`` tag pointing at one; never with non-finite weights; and a file that is not a checkpoint
is one error naming it, not a pickle traceback.

Saves go through detectron2's ``PathManager`` like the rest of a run's output: a local OUTPUT_DIR gets a temp
file in the same folder, fsync and rename; a remote one (any ``scheme://`` path an iopath handler serves) gets
a complete local temp file copied with ``PathManager.copy_from_local`` (the backend's upload is the atomic step:
object stores publish an object only once it is complete).
"""
import contextlib
import io
import os
import tempfile
from typing import Any, Iterator

import torch
from detectron2.utils.file_io import PathManager

from .. import compat
from ..utils.io import FILE_MODE, atomic_open

__all__ = ["AtomicDetectionCheckpointer", "atomic_output"]


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[io.BufferedIOBase]:
    """``with atomic_output(path) as f:`` -- ``f`` takes bytes; ``path`` appears complete or not at all.

    Local paths: :func:`metaalign_det.utils.io.atomic_open`. Remote (``scheme://``) paths: the bytes go to a
    local temp file, which ``PathManager.copy_from_local`` uploads once it is complete.
    """
    if not _is_remote(path):
        with atomic_open(path.replace("file://", "", 1) if path.startswith("file://") else path) as f:
            yield f
        return
    fd, tmp = tempfile.mkstemp(suffix=".tmp", prefix="metaalign_ckpt_")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
        PathManager.mkdirs(os.path.dirname(path))
        PathManager.copy_from_local(tmp, path, overwrite=True)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicDetectionCheckpointer(compat.CheckpointerBase):
    """``DetectionCheckpointer`` whose ``save`` / ``tag_last_checkpoint`` write atomically through
    :func:`atomic_output` (local: temp file, fsync, rename, mode 0644; remote: through ``PathManager``).

    ``save`` refuses (FloatingPointError) a model with a non-finite floating-point weight or buffer: the
    trainer stops a diverged run before its checkpoint hook, this is the last line of defence. Reading a file
    that is not a checkpoint raises :class:`metaalign_det.compat.CheckpointReadError` (a ValueError), one line.
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
        with atomic_output(save_file) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(os.path.basename(save_file))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_output(os.path.join(self.save_dir, "last_checkpoint")) as f:
            f.write(last_filename_basename.encode("utf-8"))
