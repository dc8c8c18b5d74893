"""Checkpoints written atomically: a crash while saving never leaves a truncated ``.pth`` or a
``last_checkpoint`` tag pointing at one; never with non-finite weights; and a file that is not a checkpoint
is one error naming it, not a pickle traceback.

Saves go through detectron2's ``PathManager`` like the rest of a run's output: a local OUTPUT_DIR gets a temp
file in the same folder, fsync and rename; a remote one (any ``scheme://`` path an iopath handler serves) gets
a complete local temp file copied with ``PathManager.copy_from_local`` (the backend's upload is the atomic step:
object stores publish an object only once it is complete).
"""
import contextlib
import errno
import io
import os
import re
import tempfile
from typing import Any, Iterator, List, Optional

import torch
from detectron2.utils.file_io import PathManager

from .. import compat
from ..utils.interrupts import held_interrupts
from ..utils.io import FILE_MODE, atomic_open

__all__ = ["AtomicDetectionCheckpointer", "atomic_output", "CheckpointWriteError", "intact_checkpoints",
           "unreadable_resume_message"]


class CheckpointWriteError(Exception):
    """A checkpoint could not be written (disk full, folder gone, ...): one line naming the file, the reason and
    the checkpoint that ``last_checkpoint`` still names (untouched: the write was atomic)."""


def _os_error_in(error: BaseException) -> Optional[OSError]:
    """The OSError behind ``error``: itself, or one in its cause / context chain (``torch.save`` on a full disk
    raises a RuntimeError "unexpected pos" whose context is the OSError ENOSPC of the failed write)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


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
    A Ctrl-C or SIGTERM arriving during ``save`` is delivered once the checkpoint and its tag are written.

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
        previous = self.get_checkpoint_file() if self.has_checkpoint() else ""
        what = f"cannot save checkpoint {save_file}"
        try:
            # Ctrl-C / SIGTERM wait for the checkpoint and its tag: the run then stops with this one complete
            # (an interrupted torch.save fails with a RuntimeError while unwinding, logged with a traceback)
            with held_interrupts():
                with atomic_output(save_file) as f:
                    torch.save(data, f)
                what = f"saved {save_file} but cannot update last_checkpoint"
                self.tag_last_checkpoint(os.path.basename(save_file))
        except (OSError, RuntimeError) as e:
            os_error = _os_error_in(e)
            if os_error is None:
                raise  # not a failed write: a bug, with its traceback
            reason = os.strerror(os_error.errno) if os_error.errno else str(os_error)
            kept = (f"last_checkpoint still names {previous}, which is intact" if previous else
                    "no earlier checkpoint exists")
            hint = ": free some space and resume with --resume" if os_error.errno in (errno.ENOSPC, errno.EDQUOT) \
                else ""
            raise CheckpointWriteError(f"{what} ({reason}); {kept}{hint}") from e

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_output(os.path.join(self.save_dir, "last_checkpoint")) as f:
            f.write(last_filename_basename.encode("utf-8"))


_NUMBERED = re.compile(r"^model_(\d+)\.pth$")


def _newest_first(name: str):
    m = _NUMBERED.match(name)
    if name == "model_final.pth":
        return (2, 0, name)
    return (1, int(m.group(1)), name) if m else (0, 0, name)


def intact_checkpoints(model: torch.nn.Module, folder: str, skip: str = "") -> Iterator[str]:
    """The ``.pth`` files of ``folder`` that read as checkpoints (:func:`compat.read_checkpoint`), newest first:
    ``model_final.pth``, then ``model_NNNNNNN.pth`` by iteration, then other names; ``skip`` is left out.
    Lazy: each file is read only when the next one is asked for."""
    names: List[str] = sorted((n for n in os.listdir(folder) if n.endswith(".pth") and n != os.path.basename(skip)),
                              key=_newest_first, reverse=True)
    for name in names:
        path = os.path.join(folder, name)
        try:
            compat.read_checkpoint(model, path)
        except compat.CheckpointReadError:
            continue
        yield path


def unreadable_resume_message(model: torch.nn.Module, folder: str, path: str, reason: str) -> str:
    """One line for ``--resume`` when the checkpoint that ``folder/last_checkpoint`` names cannot be read:
    ``reason``, and the newest intact checkpoint of the folder with how to resume from it (or that none is)."""
    tag = os.path.join(folder, "last_checkpoint")
    found = next(intact_checkpoints(model, folder, skip=path), None)
    if found is None:
        return (f"--resume: {reason} ({tag} names it), and no other checkpoint in {folder} reads fine: "
                f"start again without --resume")
    name = os.path.basename(found)
    return (f"--resume: {reason} ({tag} names it); the newest checkpoint in {folder} that reads fine is {name}: "
            f"to resume from it, write {name} into {tag} (echo {name} > {tag}) and run again with --resume")
