"""Does a checkpoint fit the model a config builds? Checked before evaluating, so that weights trained for
another backbone or class count fail with the offending keys named instead of evaluating a half-random model.

Rules (keys after detectron2's own loading: "model" entry, "module." prefix stripped):
* a tensor whose shape differs from the model's -> error;
* no key in common -> error;
* a model key missing from the checkpoint under ``backbone.`` / ``proposal_generator.`` / ``roi_heads.``
  (what GeneralizedRCNN runs at inference) -> error, unless ``allow_missing``;
  other missing keys (e.g. domain discriminators, unused at inference) and unused checkpoint keys -> warnings.
With ``use_ema`` (configs with MODEL.EMA.ENABLED) the checkpoint's ``"ema"`` entry -- the exponential moving
average the trainer evaluates, the mean teacher -- is loaded instead of its ``"model"`` entry (the student).
Checkpoints that detectron2 loads by name-matching heuristics (Caffe2/Detectron1 ``.pkl``, pycls) are not
checked (their names differ by design); detectron2 logs what it matched.

Files are read only through ``DetectionCheckpointer.load`` (:mod:`metaalign_det.compat`), so the same code works on
detectron2 v0.6 and on newer builds.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Set, Tuple

import numpy as np

from .. import compat

__all__ = ["WeightsMismatchError", "INFERENCE_PREFIXES", "check_weights_fit", "load_checked_weights",
           "EvalWeights", "load_eval_weights"]

INFERENCE_PREFIXES = ("backbone.", "proposal_generator.", "roi_heads.")
_SHOWN = 5  # keys named in a message


class WeightsMismatchError(ValueError):
    """The checkpoint does not fit the model built from the config."""


def _some(keys: List[str]) -> str:
    keys = sorted(keys)
    more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


_CLS_SCORE = "roi_heads.box_predictor.cls_score.bias"  # [num_classes + 1]: detectron2's softmax has a background


def _class_count_hint(bad: List[Tuple[str, tuple, tuple]]) -> str:
    """When the box classifier's output size differs (the usual cause: a checkpoint trained for another number
    of classes), the setting that makes it fit; else ''. ``bad``: (key, checkpoint shape, model shape)."""
    for key, got, want in bad:
        if key == _CLS_SCORE and len(got) == len(want) == 1 and got[0] != want[0]:
            k, n = got[0] - 1, want[0] - 1
            return (f". The checkpoint detects {k} class{'es' if k != 1 else ''}, the config {n}: set "
                    f"MODEL.ROI_HEADS.NUM_CLASSES {k}")
    return ""


def _check_exists(path: str) -> None:
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")


def _read(model, path: str) -> Dict:
    _check_exists(path)
    try:
        return compat.read_checkpoint(model, path)
    except compat.CheckpointReadError as e:
        raise WeightsMismatchError(str(e)) from e


def _compare(model, ckpt: Dict, path: str, allow_missing: bool) -> List[str]:
    if ckpt.get("matching_heuristics", False):
        return [f"{path}: loaded by detectron2's name-matching heuristics; keys and shapes are not checked"]
    state = ckpt["model"]
    if not isinstance(state, dict):
        raise WeightsMismatchError(f"{path}: its 'model' entry is a {type(state).__name__}, expected a state dict")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    model_state = model.state_dict()
    common = [k for k in model_state if k in state]
    if not common:
        raise WeightsMismatchError(
            f"{path}: none of the model's {len(model_state)} weights is in the checkpoint (checkpoint keys: "
            f"{_some(list(state))}; model keys: {_some(list(model_state))})"
        )
    bad: List[Tuple[str, tuple, tuple]] = []
    for k in common:
        want, got = tuple(model_state[k].shape), tuple(np.shape(state[k]))
        if want != got:
            bad.append((k, got, want))
    if bad:
        shown = "; ".join(f"{k}: checkpoint {list(g)} vs model {list(w)}" for k, g, w in sorted(bad)[:_SHOWN])
        more = f" (and {len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else ""
        raise WeightsMismatchError(f"{path}: {len(bad)} weight shape(s) do not fit the config: {shown}{more}"
                                   f"{_class_count_hint(bad)}")
    missing = [k for k in model_state if k not in state and not k.endswith("num_batches_tracked")]
    needed = [k for k in missing if k.startswith(INFERENCE_PREFIXES)]
    if needed and not allow_missing:
        raise WeightsMismatchError(
            f"{path}: {len(needed)} weight(s) the model needs for inference are missing: {_some(needed)}"
        )
    warnings = []
    if missing:
        warnings.append(f"{path}: {len(missing)} model weight(s) not in the checkpoint: {_some(missing)}")
    unused = [k for k in state if k not in model_state]
    if unused:
        warnings.append(f"{path}: {len(unused)} checkpoint weight(s) unused by this config: {_some(unused)}")
    return warnings


def _select_ema(ckpt: Dict, path: str, use_ema: bool) -> Tuple[Dict, List[str]]:
    """The checkpoint with its EMA weights as ``"model"`` when ``use_ema`` and it has them."""
    if not use_ema:
        return ckpt, []
    ema = ckpt.get("ema")
    if isinstance(ema, dict) and isinstance(ema.get("model"), dict):
        return dict(ckpt, model=ema["model"]), []
    return ckpt, [f"{path}: MODEL.EMA.ENABLED but the checkpoint has no 'ema' entry; using its 'model' weights"]


def check_weights_fit(model, path: str, allow_missing: bool = False, use_ema: bool = False) -> List[str]:
    """Raise FileNotFoundError / WeightsMismatchError if ``path`` cannot be loaded into ``model``; else
    return warnings (missing non-inference keys, unused checkpoint keys)."""
    ckpt, notes = _select_ema(_read(model, path), path, use_ema)
    return notes + _compare(model, ckpt, path, allow_missing)


@dataclass
class EvalWeights:
    """What :func:`load_eval_weights` loaded: ``warnings`` (one line each), ``keys`` (the model-weight names
    stored in the loaded entry, after "module." stripping), ``ema`` (True: the checkpoint's EMA entry)."""

    warnings: List[str] = field(default_factory=list)
    keys: Set[str] = field(default_factory=set)
    ema: bool = False


def _load(model, path: str, allow_missing: bool, use_ema: bool) -> EvalWeights:
    _check_exists(path)
    report = EvalWeights()

    class _Checked(compat.CheckpointerBase):
        def prepare_checkpoint(self, checkpoint):
            ckpt, notes = _select_ema(checkpoint, path, use_ema)
            report.warnings = notes + _compare(model, ckpt, path, allow_missing)
            report.ema = ckpt is not checkpoint
            if isinstance(ckpt.get("model"), dict):
                report.keys = {k[len("module."):] if k.startswith("module.") else k for k in ckpt["model"]}
            return ckpt  # loaded by detectron2: ndarray conversion, heuristics, prefix stripping

    try:
        _Checked(model, save_to_disk=False).load(path, checkpointables=[])
    except compat.CheckpointReadError as e:
        raise WeightsMismatchError(str(e)) from e
    return report


def load_checked_weights(model, path: str, allow_missing: bool = False, use_ema: bool = False) -> List[str]:
    """:func:`check_weights_fit`, then load the same checkpoint into ``model`` the way DetectionCheckpointer
    does (one read of the file, through its ``load()``). Returns the warnings. ``use_ema``: load the ``"ema"``
    entry (see above)."""
    return _load(model, path, allow_missing, use_ema).warnings


def load_eval_weights(model, cfg, path: str, allow_missing: bool = False) -> EvalWeights:
    """Load the weights the config evaluates: the checkpoint's ``"ema"`` entry for MODEL.EMA.ENABLED configs
    (what the trainer evaluates), else its ``"model"`` entry; checked as :func:`check_weights_fit` does."""
    return _load(model, path, allow_missing, bool(cfg.MODEL.EMA.ENABLED))
