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
"""
import os
from typing import Dict, List, Tuple

import numpy as np
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["WeightsMismatchError", "INFERENCE_PREFIXES", "check_weights_fit", "load_checked_weights"]

INFERENCE_PREFIXES = ("backbone.", "proposal_generator.", "roi_heads.")
_SHOWN = 5  # keys named in a message


class WeightsMismatchError(ValueError):
    """The checkpoint does not fit the model built from the config."""


def _some(keys: List[str]) -> str:
    keys = sorted(keys)
    more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _read(model, path: str) -> Dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return DetectionCheckpointer(model)._load_file(path)
    except Exception as e:  # corrupt / foreign file: one line, not a pickle traceback
        raise WeightsMismatchError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {_reason(e)})") \
            from e


def _reason(error: Exception) -> str:
    """One line of ``error``: torch.load's weights_only refusal is a page of advice around the actual reason."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        tag = "WeightsUnpickler error:"
        if tag in line:
            rest = line.split(tag, 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return f"torch.load(weights_only=True) refused it: {rest}"
    return lines[0] if lines else ""


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
        raise WeightsMismatchError(f"{path}: {len(bad)} weight shape(s) do not fit the config: {shown}{more}")
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


def load_checked_weights(model, path: str, allow_missing: bool = False, use_ema: bool = False) -> List[str]:
    """:func:`check_weights_fit`, then load the same checkpoint into ``model`` the way DetectionCheckpointer
    does (one read of the file). Returns the warnings. ``use_ema``: load the ``"ema"`` entry (see above)."""
    checkpointer = DetectionCheckpointer(model)
    ckpt, notes = _select_ema(_read(model, path), path, use_ema)
    warnings = notes + _compare(model, ckpt, path, allow_missing)
    checkpointer._load_model(ckpt)  # detectron2's loader: ndarray conversion, heuristics, prefix stripping
    return warnings
