"""tools/prepare_datasets.py: what is missing (with archive names), conversion, counts per split and class."""
import dataclasses
import importlib.util
import os

import pytest

import metaalign_det  # noqa: F401
from metaalign_det.data.datasets import builtin
from metaalign_det.data.datasets import synthetic as S
from metaalign_det.data.datasets.cityscapes_foggy import gtfine_cache_file

from . import fake_trees as ft

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def tool():
    spec = importlib.util.spec_from_file_location("prepare_datasets", os.path.join(REPO, "tools", "prepare_datasets.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    builtin.register_all_builtin(overwrite=True)  # the tool re-binds the builtin names to its --root


def test_reports_missing_trees_with_archive_names(tool, tmp_path, capsys):
    rc = tool.main(["cityscapes", "foggy", "sim10k", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com" in out
    assert "leftImg8bit_trainvaltest_foggy.zip" in out
    assert "repro_10k_images.tgz and repro_10k_annotations.tgz" in out
    assert out.count("NOT READY") == 3


def test_partial_tree_names_each_missing_folder(tool, tmp_path, capsys):
    ft.make_cityscapes(str(tmp_path), foggy=False)
    import shutil

    shutil.rmtree(tmp_path / "cityscapes" / "gtFine" / "val")
    rc = tool.main(["cityscapes", "foggy", "--root", str(tmp_path), "--check"])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"missing {tmp_path}/cityscapes/gtFine/val/ (from gtFine_trainvaltest.zip" in out
    assert f"missing {tmp_path}/cityscapes/leftImg8bit_foggy/train/ (from leftImg8bit_trainvaltest_foggy.zip" in out
    assert "note: " in out and "the full release has 2,975" in out


def test_converts_once_and_counts_per_split_and_class(tool, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(S, "DEFAULT_PARAMS", dataclasses.replace(S.DEFAULT_PARAMS, n_train=2, n_val=1, n_dev=1, n_test=1))
    ft.make_cityscapes(str(tmp_path))
    ft.make_sim10k(str(tmp_path))
    rc = tool.main(["--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    cs = str(tmp_path / "cityscapes")
    assert os.path.isfile(gtfine_cache_file(cs, "train")) and os.path.isfile(gtfine_cache_file(cs, "val"))
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "images=" in line}
    assert ("images=3      no-object=1     person=3  rider=1  car=2  truck=1  bus=0  train=0  motorcycle=0  "
            "bicycle=1  crowd=1") in lines["cityscapes_det_train"]
    assert "images=9 " in lines["foggy_cityscapes_det_train_allbeta"]
    assert "images=2      no-object=0     car=2" in lines["cityscapes_car_val"]
    assert "images=3      no-object=1     car=3  difficult=1" in lines["sim10k_car_trainval"]
    assert "images=1 " in lines["synthetic_foggy_val"]
    assert "all requested datasets are ready" in out


def test_make_list_writes_the_sim10k_split(tool, tmp_path, capsys):
    ft.make_sim10k(str(tmp_path))
    list_file = tmp_path / "sim10k" / "VOC2012" / "ImageSets" / "Main" / "trainval.txt"
    list_file.unlink()
    assert tool.main(["sim10k", "--root", str(tmp_path)]) == 1
    assert "--make-list" in capsys.readouterr().out
    assert tool.main(["sim10k", "--root", str(tmp_path), "--make-list"]) == 0
    assert list_file.read_text().split() == sorted(ft.SIM_IMAGES)


def test_check_says_whether_the_demo_pair_is_generated(tool, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(S, "DEFAULT_PARAMS", dataclasses.replace(S.DEFAULT_PARAMS, n_train=1, n_val=1, n_dev=1, n_test=1))
    assert tool.main(["synthetic", "--check", "--root", str(tmp_path)]) == 0
    assert "not generated yet" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "synthetic_pair")
    assert tool.main(["synthetic", "--root", str(tmp_path)]) == 0
    capsys.readouterr()
    assert tool.main(["synthetic", "--check", "--root", str(tmp_path)]) == 0
    assert "generated, stamp up to date" in capsys.readouterr().out
