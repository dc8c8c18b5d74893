"""The one place that deals with detectron2 / Pillow / numpy version differences.

Applied once, before any detectron2 import, by ``import metaalign_det``. With an official detectron2
build (compiled ``detectron2._C`` present) on a Pillow that still has ``Image.LINEAR`` it does nothing.

What it may do, each logged once in one line:

* ``detectron2._C`` placeholder -- the registry sdist ``pb1-detectron2==0.6`` (official v0.6 Python code)
  ships no C++ sources, so ``detectron2._C`` does not exist and ``detectron2.layers`` fails to import
  (``deform_conv`` imports it at module top). The placeholder makes the import work; touching any compiled
  op on it raises :class:`MissingCompiledOpError` naming the op and the feature. Faster R-CNN does not need
  them: ROIAlign and NMS come from torchvision.
* ``PIL.Image.LINEAR`` alias -- removed in Pillow 10, read as a default argument when
  ``detectron2.data.transforms`` is imported. Pillow < 10 defined ``LINEAR = BILINEAR``.

What it deliberately does not do: alias ``np.bool`` / ``np.str`` (gone in numpy 1.24). Only detectron2's
PascalVOC evaluator, ``load_voc_instances`` and empty-bitmask code use them; this project has its own
evaluator and VOC loader, so numpy is left untouched.

detectron2 API differences between v0.6 and newer official builds, each behind one named function (the
engine calls these and never reads or writes detectron2's private trainer state itself):

* :func:`next_batch` / :func:`reset_data_loader` -- v0.6 ``SimpleTrainer`` keeps a plain
  ``_data_loader_iter`` attribute created in ``__init__``; newer builds make it a read-only lazy property
  (over ``_data_loader_iter_obj``) and add ``reset_data_loader(data_loader_builder)``.
* :func:`default_trainer_checkpoints_step_trainer` -- newer ``DefaultTrainer.state_dict`` /
  ``load_state_dict`` include the step trainer's state under ``"_trainer"``; v0.6 leaves it out.
* :func:`put_scalars_at` -- write scalars for an earlier iteration: newer ``EventStorage.put_scalar`` takes
  ``cur_iter``; v0.6 records ``storage.iter``, so the (public) ``iter`` is set for the call and restored.
* :class:`CheckpointerBase` / :func:`read_checkpoint` -- read a checkpoint file only through
  ``DetectionCheckpointer.load`` (newer builds assert that ``_load_file`` runs inside ``load()``; v0.6 does
  not), with read failures turned into one :class:`CheckpointReadError` line and a public hook,
  ``prepare_checkpoint``, between reading the file and loading the model.

Nothing else in the package touches a private detectron2 / fvcore name (tests/foundation scans for it).
"""
import importlib.util
import inspect
import logging
import pickle
import sys
import types
import zipfile
from typing import Any, Dict, Optional

__all__ = [
    "apply",
    "applied",
    "log_applied",
    "MissingCompiledOpError",
    "D2_MISSING_MESSAGE",
    "next_batch",
    "reset_data_loader",
    "default_trainer_checkpoints_step_trainer",
    "put_scalars_at",
    "step_trainer",
    "set_step_trainer",
    "record_eval_results",
    "CheckpointReadError",
    "CHECKPOINT_READ_ERRORS",
    "checkpoint_read_reason",
    "read_checkpoint",
]

logger = logging.getLogger(__name__)

D2_MISSING_MESSAGE = (
    "metaalign_det needs detectron2, which is not importable: run `make test` (it installs detectron2 0.6 "
    "into .venv), or `python tools/install_detectron2.py`, or build the official detectron2 from source "
    "(https://github.com/facebookresearch/detectron2)"
)

# compiled op -> the detectron2 feature it belongs to (for the error message)
_OP_FEATURES = {
    "nms_rotated": "rotated boxes",
    "box_iou_rotated": "rotated boxes",
    "roi_align_rotated_forward": "rotated boxes",
    "roi_align_rotated_backward": "rotated boxes",
    "deform_conv_forward": "deformable convolution",
    "deform_conv_backward_input": "deformable convolution",
    "deform_conv_backward_filter": "deformable convolution",
    "modulated_deform_conv_forward": "deformable convolution",
    "modulated_deform_conv_backward": "deformable convolution",
    "COCOevalAccumulate": "fast COCO evaluation (COCOeval_opt)",
    "COCOevalEvaluateImages": "fast COCO evaluation (COCOeval_opt)",
    "InstanceAnnotation": "fast COCO evaluation (COCOeval_opt)",
    "ImageEvaluation": "fast COCO evaluation (COCOeval_opt)",
}

_applied = []


class MissingCompiledOpError(AttributeError):
    """A compiled detectron2 op was used, but this detectron2 has no compiled ops.

    Subclasses AttributeError so ``hasattr(detectron2._C, op)`` stays False instead of crashing.
    """


class _CompiledOpsPlaceholder(types.ModuleType):
    """Stands in for ``detectron2._C`` when the compiled extension is absent."""

    # collect_env (called by default_setup) asks for the build info: answer honestly instead of failing.
    def get_compiler_version(self):
        return "none: detectron2._C is a metaalign_det placeholder (no compiled ops)"

    def get_cuda_version(self):
        return "none"

    def has_cuda(self):
        return False

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        feature = _OP_FEATURES.get(name, "a compiled detectron2 op")
        raise MissingCompiledOpError(
            f"detectron2._C.{name} ({feature}) is not available: this detectron2 was installed without "
            f"compiled ops. MetaAlign / Faster R-CNN does not need it; build the official detectron2 from "
            f"source to use {feature}."
        )


def _needs_placeholder():
    if "detectron2._C" in sys.modules:
        return False
    try:
        return importlib.util.find_spec("detectron2._C") is None
    except ModuleNotFoundError:  # detectron2 itself missing
        raise ImportError(D2_MISSING_MESSAGE) from None


def _install_placeholder():
    mod = _CompiledOpsPlaceholder(
        "detectron2._C", "metaalign_det placeholder for detectron2's compiled ops (none are built)"
    )
    mod.__file__ = __file__  # a path that exists; collect_env never opens it (has_cuda() is False)
    sys.modules["detectron2._C"] = mod
    import detectron2

    detectron2._C = mod


def _pillow_lacks_linear():
    import PIL.Image

    return not hasattr(PIL.Image, "LINEAR")


def apply():
    """Apply the needed shims once; return the list of what was done (empty on an official build)."""
    if _applied:
        return list(_applied)
    try:
        found = importlib.util.find_spec("detectron2") is not None
    except ImportError:
        found = False
    if not found:
        raise ImportError(D2_MISSING_MESSAGE)
    done = []
    if _needs_placeholder():
        _install_placeholder()
        done.append("detectron2._C placeholder (no compiled ops: rotated boxes, deformable conv, fast COCO eval)")
    if _pillow_lacks_linear():
        import PIL.Image

        PIL.Image.LINEAR = PIL.Image.Resampling.BILINEAR  # Pillow < 10 had LINEAR == BILINEAR
        done.append("PIL.Image.LINEAR = BILINEAR (removed in Pillow 10)")
    if done:
        logger.info("metaalign_det.compat applied: %s", "; ".join(done))
        _applied.extend(done)
    else:
        _applied.append(None)  # marks "checked, nothing needed"
    return done


def log_applied(log=None):
    """Log, once more and where detectron2's logger is set up, what :func:`apply` did (one line)."""
    done = applied()
    (log or logging.getLogger("detectron2")).info(
        "metaalign_det.compat: %s", "; ".join(done) if done else "nothing needed (official detectron2 build)"
    )


def applied():
    """What :func:`apply` did in this process (empty list: nothing was needed)."""
    return [x for x in _applied if x is not None]


# ---- detectron2 trainer API: v0.6 vs newer official builds ---------------------------------------------


def step_trainer(trainer):
    """The step trainer (``SimpleTrainer`` / ``AMPTrainer`` or a subclass) a ``DefaultTrainer`` delegates
    ``run_step`` to; kept as ``_trainer`` in every detectron2 version so far."""
    return trainer._trainer


def set_step_trainer(trainer, step) -> None:
    """Make ``step`` the step trainer of ``trainer`` (a ``DefaultTrainer`` subclass building its own)."""
    trainer._trainer = step


def record_eval_results(trainer, results):
    """Record ``results`` where ``DefaultTrainer.train()`` reads the last evaluation (for
    TEST.EXPECTED_RESULTS); returns ``results``."""
    trainer._last_eval_results = results
    return results


def next_batch(step_trainer):
    """The next item of ``step_trainer.data_loader``, from the iterator detectron2 keeps for it.

    v0.6: a plain attribute created in ``__init__``; newer: a property that creates it on first use.
    Reading it is the same in both.
    """
    return next(step_trainer._data_loader_iter)


def reset_data_loader(step_trainer, data_loader_builder):
    """Replace the data loader of a ``SimpleTrainer``: ``data_loader_builder()`` builds the new one and the
    next :func:`next_batch` draws from a fresh iterator of it.

    Newer detectron2: its ``SimpleTrainer.reset_data_loader`` (``_data_loader_iter`` is a read-only
    property there, so it cannot be assigned). v0.6 has no such method and no other way: its
    ``_data_loader_iter`` is a plain attribute that ``run_step`` reads, so it is set here, on v0.6 only.
    """
    reset = getattr(step_trainer, "reset_data_loader", None)
    if callable(reset):
        reset(data_loader_builder)
        return
    step_trainer.data_loader = data_loader_builder()
    step_trainer._data_loader_iter = iter(step_trainer.data_loader)  # v0.6: its documented access path


def default_trainer_checkpoints_step_trainer():
    """Whether ``DefaultTrainer.state_dict`` / ``load_state_dict`` save and restore the step trainer's state
    (``"_trainer"``: optimizer, grad scaler, ...) themselves -- True on builds newer than v0.6."""
    from detectron2.engine import DefaultTrainer, TrainerBase

    return DefaultTrainer.load_state_dict is not TrainerBase.load_state_dict


def _put_scalar_takes_cur_iter() -> bool:
    from detectron2.utils.events import EventStorage

    return "cur_iter" in inspect.signature(EventStorage.put_scalar).parameters


def put_scalars_at(storage, iteration: int, smoothing_hint: bool = True, **scalars: float) -> None:
    """``storage.put_scalars(**scalars)`` recorded at ``iteration`` instead of the storage's current one.

    Newer detectron2: ``put_scalar(..., cur_iter=iteration)``. v0.6 has no such argument and records
    ``storage.iter``: the public ``iter`` property is set for the calls and restored afterwards.
    """
    if _put_scalar_takes_cur_iter():
        for name, value in scalars.items():
            storage.put_scalar(name, value, smoothing_hint=smoothing_hint, cur_iter=iteration)
        return
    current = storage.iter
    try:
        storage.iter = iteration
        for name, value in scalars.items():
            storage.put_scalar(name, value, smoothing_hint=smoothing_hint)
    finally:
        storage.iter = current


# ---- checkpoint reading: only through DetectionCheckpointer.load ----------------------------------------

class CheckpointReadError(ValueError):
    """A file that cannot be read as a checkpoint; the message is one line naming the file."""


# What torch.load / pickle raise on a file that is not a readable checkpoint: garbage or text
# (UnpicklingError), empty (EOFError), truncated zip (RuntimeError "PytorchStreamReader failed", BadZipFile),
# a weights_only refusal (UnpicklingError), unreadable (OSError), a pickled non-mapping (TypeError from
# detectron2's ``"model" in loaded``), a bad query string (ValueError). Anything else is a bug and surfaces.
CHECKPOINT_READ_ERRORS = (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, TypeError,
                          zipfile.BadZipFile)


def checkpoint_read_reason(error: BaseException) -> str:
    """One line of ``error``: torch.load's weights_only refusal is a page of advice around the actual reason."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        tag = "WeightsUnpickler error:"
        if tag in line:
            rest = line.split(tag, 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return f"torch.load(weights_only=True) refused it: {rest}"[:300]
    first = lines[0] if lines else ""
    # torch's reader appends a paragraph of advice to its reason ("... central directory. This is an internal
    # miniz error. If you are seeing this error, ..."): the reason is the first sentence
    return (first.split(". This is ", 1)[0] if len(first) > 120 else first)[:300]


def _checkpointer_class():
    from detectron2.checkpoint import DetectionCheckpointer

    return DetectionCheckpointer


def _make_checkpointer_base():
    DetectionCheckpointer = _checkpointer_class()

    class CheckpointerBase(DetectionCheckpointer):
        """``DetectionCheckpointer`` with two guarantees and one public hook, the same on every build.

        * A file that cannot be read as a checkpoint raises :class:`CheckpointReadError`, one line naming it
          (not a pickle traceback; on newer builds not an assertion about ``load()`` either).
        * ``prepare_checkpoint(checkpoint) -> dict or None`` runs on the dict read from the file, before the
          model is loaded from it: return the (possibly changed) dict to load, or None to load nothing
          (read only). Default: the dict unchanged.

        Files are only ever read through ``load()`` / ``resume_or_load()``, as newer detectron2 requires.
        """

        def prepare_checkpoint(self, checkpoint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            return checkpoint

        def _load_file(self, filename: str):
            try:
                return super()._load_file(filename)
            except CHECKPOINT_READ_ERRORS as e:
                raise CheckpointReadError(
                    f"{filename}: cannot be read as a checkpoint ({type(e).__name__}: {checkpoint_read_reason(e)})"
                ) from e

        def _load_model(self, checkpoint):
            checkpoint = self.prepare_checkpoint(checkpoint)
            if checkpoint is None:
                return None  # read only: fvcore's load() skips the incompatible-keys report on None
            return super()._load_model(checkpoint)

    CheckpointerBase.__module__ = __name__
    CheckpointerBase.__qualname__ = "CheckpointerBase"
    return CheckpointerBase


_CHECKPOINTER_BASE = []


def __getattr__(name):
    # CheckpointerBase subclasses detectron2's DetectionCheckpointer, which may only be imported after
    # apply() (the _C placeholder): built on first access instead of at import time.
    if name == "CheckpointerBase":
        if not _CHECKPOINTER_BASE:
            _CHECKPOINTER_BASE.append(_make_checkpointer_base())
        return _CHECKPOINTER_BASE[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_checkpoint(model, path: str) -> Dict[str, Any]:
    """The dict stored in checkpoint ``path`` as detectron2 reads it for ``model`` ("model" entry present;
    ``.pkl`` / ``.pyth`` converted with ``matching_heuristics``), without loading anything into ``model``.

    Raises :class:`CheckpointReadError` (one line) if the file is not a readable checkpoint.
    """
    captured: Dict[str, Any] = {}

    class _Reader(__getattr__("CheckpointerBase")):
        def prepare_checkpoint(self, checkpoint):
            captured.update(checkpoint)
            return None

    _Reader(model, save_to_disk=False).load(path, checkpointables=[])
    return captured
