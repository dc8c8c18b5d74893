"""check_weights_fit / load_checked_weights on a small module with GeneralizedRCNN-style names."""
import pytest
import torch
from torch import nn

import metaalign_det  # noqa: F401  (compat before detectron2)
from metaalign_det.evaluation import WeightsMismatchError, check_weights_fit, load_checked_weights


class Toy(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.backbone = nn.Linear(4, 8)
        self.roi_heads = nn.Linear(8, classes)
        self.da_heads = nn.Linear(8, 1)  # a discriminator: not run at inference


def _save(path, state, wrap=True):
    torch.save({"model": state} if wrap else state, path)
    return str(path)


def test_fitting_checkpoint_loads_and_reports_extras(tmp_path):
    src = Toy()
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("da_heads")}
    state["module.extra.weight"] = torch.zeros(2)  # DDP prefix is stripped; the key is unused
    path = _save(tmp_path / "a.pth", state)
    model = Toy()
    warnings = load_checked_weights(model, path)
    assert torch.equal(model.backbone.weight, src.backbone.weight)
    assert any("2 model weight(s) not in the checkpoint: da_heads.bias, da_heads.weight" in w for w in warnings)
    assert any("1 checkpoint weight(s) unused by this config: extra.weight" in w for w in warnings)


def test_raw_state_dict_without_model_key(tmp_path):
    path = _save(tmp_path / "raw.pth", Toy().state_dict(), wrap=False)
    assert check_weights_fit(Toy(), path) == []


def test_shape_mismatch_names_keys_and_shapes(tmp_path):
    path = _save(tmp_path / "b.pth", Toy(classes=5).state_dict())
    with pytest.raises(WeightsMismatchError, match=r"2 weight shape\(s\) do not fit the config: "
                       r"roi_heads.bias: checkpoint \[5\] vs model \[3\]; roi_heads.weight: checkpoint \[5, 8\]"):
        check_weights_fit(Toy(), path)


def test_no_common_key(tmp_path):
    path = _save(tmp_path / "c.pth", {"features.0.weight": torch.zeros(1)})
    with pytest.raises(WeightsMismatchError, match="none of the model's 6 weights is in the checkpoint"):
        check_weights_fit(Toy(), path)


def test_missing_inference_weights(tmp_path):
    state = {k: v for k, v in Toy().state_dict().items() if not k.startswith("roi_heads")}
    path = _save(tmp_path / "d.pth", state)
    with pytest.raises(WeightsMismatchError, match="2 weight.s. the model needs for inference are missing: "
                       "roi_heads.bias, roi_heads.weight"):
        check_weights_fit(Toy(), path)
    assert check_weights_fit(Toy(), path, allow_missing=True)  # allowed: warnings only


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        check_weights_fit(Toy(), str(tmp_path / "none.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsMismatchError, match="junk.pth: cannot be read as a checkpoint"):
        check_weights_fit(Toy(), str(tmp_path / "junk.pth"))
