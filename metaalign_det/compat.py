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

* :func:`init_step_trainer` -- ``SimpleTrainer.__init__`` takes (model, data_loader, optimizer) in every
  version; newer ones add keyword options, and ``AMPTrainer.__init__`` changed its signature (v0.6:
  ``grad_scaler``; newer: ``precision``, ``log_grad_scaler``, ...) and builds a CUDA-only GradScaler.
* :func:`next_batch` / :func:`reset_data_loader` -- v0.6 ``SimpleTrainer`` keeps a plain
  ``_data_loader_iter`` attribute created in ``__init__``; newer builds make it a read-only lazy property
  (over ``_data_loader_iter_obj``) and add ``reset_data_loader(data_loader_builder)``.
* :func:`default_trainer_checkpoints_step_trainer` -- newer ``DefaultTrainer.state_dict`` /
  ``load_state_dict`` include the step trainer's state under ``"_trainer"``; v0.6 leaves it out.
"""
import importlib.util
import logging
import sys
import types

__all__ = [
    "apply",
    "applied",
    "log_applied",
    "MissingCompiledOpError",
    "D2_MISSING_MESSAGE",
    "init_step_trainer",
    "next_batch",
    "reset_data_loader",
    "default_trainer_checkpoints_step_trainer",
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


def init_step_trainer(step_trainer, model, data_loader, optimizer):
    """Run ``SimpleTrainer.__init__`` with the three arguments every detectron2 version accepts.

    Called explicitly (not through ``super()``) so that an ``AMPTrainer`` subclass skips
    ``AMPTrainer.__init__``, whose signature differs between versions and which builds a CUDA-only
    GradScaler; the subclass builds its own scaler.
    """
    from detectron2.engine import SimpleTrainer

    SimpleTrainer.__init__(step_trainer, model, data_loader, optimizer)


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
