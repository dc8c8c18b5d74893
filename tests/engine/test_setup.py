"""setup_cfg: integers for float keys, and one clear line for a wrong type in a config file."""
import pytest

from metaalign_det.cli import setup_cfg
from tests.helpers.configs import QUICK


def test_float_keys_take_integers_from_the_command_line():
    cfg = setup_cfg(QUICK, ["META.INNER_LR_SCALE", "10", "SOLVER.BASE_LR", "1", "MODEL.DA_HEADS.CST_WEIGHT", "0"])
    for value, want in ((cfg.META.INNER_LR_SCALE, 10.0), (cfg.SOLVER.BASE_LR, 1.0),
                        (cfg.MODEL.DA_HEADS.CST_WEIGHT, 0.0)):
        assert value == want and type(value) is float


def test_other_type_mismatches_still_fail_with_the_key_named():
    with pytest.raises(ValueError, match=r"config override .*SOLVER.MAX_ITER"):
        setup_cfg(QUICK, ["SOLVER.MAX_ITER", "2.5"])
    with pytest.raises(ValueError, match=r"config override .*META.INNER_LR_SCALE"):
        setup_cfg(QUICK, ["META.INNER_LR_SCALE", "'ten'"])


def test_integer_for_a_float_key_in_a_config_file_says_what_to_write(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(f'_BASE_: "{QUICK}"\nMETA:\n  INNER_LR_SCALE: 10\n')
    with pytest.raises(ValueError) as info:
        setup_cfg(str(path))
    assert str(info.value) == f"{path}: META.INNER_LR_SCALE is a float key: write 10.0, not 10"
