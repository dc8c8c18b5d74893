"""compat: the _C placeholder and Pillow alias on the v0.6 repack; nothing of the kind on an official build
(simulated here, and real in the make test-d2main lane); the trainer API shims on both."""
import subprocess
import sys
import textwrap

import pytest

from tests.helpers.d2build import OFFICIAL, REPACK, official_only, repack_only


@repack_only
def test_placeholder_installed_here_and_ops_raise_clearly():
    import metaalign_det  # noqa: F401
    # isort: split
    import detectron2._C as C

    from metaalign_det import compat

    assert any("placeholder" in a for a in compat.applied())
    with pytest.raises(compat.MissingCompiledOpError, match=r"nms_rotated \(rotated boxes\).*does not need"):
        C.nms_rotated
    with pytest.raises(AttributeError, match="deformable convolution"):
        C.deform_conv_forward
    assert not hasattr(C, "COCOevalAccumulate")  # AttributeError subclass: hasattr stays False
    # the layers and transforms that needed the shims import and work
    import torch
    from detectron2.layers import nms

    keep = nms(torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10.0]]), torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
    from detectron2.data.transforms import ExtentTransform  # default arg reads Image.LINEAR

    assert ExtentTransform((0, 0, 4, 4), (2, 2)) is not None


@repack_only
def test_rotated_box_iou_names_the_missing_op():
    import torch
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    boxes = RotatedBoxes(torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0]]))
    with pytest.raises(AttributeError, match=r"box_iou_rotated \(rotated boxes\)"):
        pairwise_iou_rotated(boxes, boxes)


def test_noop_on_official_build():
    # An official build has a compiled detectron2._C and (on Pillow < 10) Image.LINEAR: simulate both.
    code = textwrap.dedent("""
        import sys, types, logging
        import PIL.Image
        PIL.Image.LINEAR = PIL.Image.Resampling.BILINEAR
        fake = types.ModuleType("detectron2._C"); fake.marker = "compiled"
        sys.modules["detectron2._C"] = fake
        records = []
        h = logging.Handler(); h.emit = records.append
        logging.getLogger("metaalign_det.compat").addHandler(h)
        logging.getLogger("metaalign_det.compat").setLevel(logging.INFO)
        import metaalign_det
        from metaalign_det import compat
        assert sys.modules["detectron2._C"].marker == "compiled", "official _C replaced"
        assert compat.applied() == [], compat.applied()
        assert records == [], [r.getMessage() for r in records]
        print("NOOP-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NOOP-OK" in proc.stdout


def test_logs_one_line_when_applied():
    code = textwrap.dedent("""
        import logging
        records = []
        h = logging.Handler(); h.emit = records.append
        logging.getLogger("metaalign_det.compat").addHandler(h)
        logging.getLogger("metaalign_det.compat").setLevel(logging.INFO)
        import metaalign_det
        from metaalign_det import compat
        compat.apply(); compat.apply()  # idempotent: still one line
        assert len(records) == 1, [r.getMessage() for r in records]
        msg = records[0].getMessage()
        assert ("placeholder" in msg) == REPACK and "LINEAR" in msg, msg
        print("ONE-LINE-OK")
    """).replace("REPACK", repr(REPACK))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ONE-LINE-OK" in proc.stdout


def test_missing_detectron2_gives_one_clear_line(tmp_path):
    # Hide detectron2 from the import system: the parts of metaalign_det that need it must fail with the
    # how-to-get-it line. (The package itself imports: the meta step is usable without detectron2, see
    # test_no_detectron2.py.)
    code = textwrap.dedent("""
        import importlib.abc, sys
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "detectron2" or name.startswith("detectron2."):
                    raise ModuleNotFoundError(name)
                return None
        sys.meta_path.insert(0, Hide())
        import metaalign_det
        try:
            import metaalign_det.modeling
        except ImportError as e:
            print("MSG:", e)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "MSG: metaalign_det needs detectron2" in proc.stdout, proc.stdout + proc.stderr
    assert "tools/install_detectron2.py" in proc.stdout


@official_only
def test_official_build_keeps_its_compiled_ops():
    import torch
    from detectron2 import _C
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    from metaalign_det import compat

    assert not any("placeholder" in a for a in compat.applied())
    assert not isinstance(_C, compat._CompiledOpsPlaceholder) and _C.__file__.endswith(".so")
    boxes = RotatedBoxes(torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0], [5.0, 5.0, 4.0, 4.0, 90.0],
                                       [7.0, 5.0, 4.0, 4.0, 0.0]]))
    iou = pairwise_iou_rotated(boxes, boxes)  # compiled box_iou_rotated
    assert torch.allclose(iou.diagonal(), torch.ones(3))
    assert abs(float(iou[0, 1]) - 1.0) < 1e-5 and abs(float(iou[0, 2]) - 1 / 3) < 1e-5


# ---- detectron2 trainer API: the installed one and a newer official build (simulated on v0.6) --------------


def _step_trainer():
    import torch
    from detectron2.engine import SimpleTrainer

    model = torch.nn.Linear(2, 1)
    return SimpleTrainer(model, ["a0", "a1", "a2"], torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("api", ["installed", "newer"])
def test_data_loader_reset_on_both_trainer_apis(monkeypatch, api):
    from detectron2.engine import SimpleTrainer

    from metaalign_det import compat
    from tests.d2_newer_api import simulate_newer_detectron2

    resets = simulate_newer_detectron2(monkeypatch) if api == "newer" else None
    t = _step_trainer()
    assert [compat.next_batch(t), compat.next_batch(t)] == ["a0", "a1"]
    compat.reset_data_loader(t, lambda: ["b0", "b1"])
    assert t.data_loader == ["b0", "b1"]
    assert [compat.next_batch(t), compat.next_batch(t)] == ["b0", "b1"]  # a fresh iterator of the new loader
    if api == "newer":
        assert len(resets) == 1  # detectron2's own reset_data_loader was used
    if api == "newer" or OFFICIAL:
        # what the engine did before: assigning the iterator fails on newer builds (read-only property)
        assert "reset_data_loader" in vars(SimpleTrainer)
        with pytest.raises(AttributeError):
            t._data_loader_iter = iter(["c0"])
    else:
        assert "reset_data_loader" not in vars(SimpleTrainer)  # the v0.6 repack has none


@pytest.mark.parametrize("api", ["installed", "newer"])
def test_who_checkpoints_the_step_trainer(monkeypatch, api):
    from detectron2.engine import DefaultTrainer

    from metaalign_det import compat
    from tests.d2_newer_api import simulate_newer_detectron2

    if api == "newer" or OFFICIAL:  # simulated on v0.6, or the real official build
        if api == "newer":
            simulate_newer_detectron2(monkeypatch)
        assert "load_state_dict" in vars(DefaultTrainer)
        assert compat.default_trainer_checkpoints_step_trainer() is True
    else:  # v0.6: DefaultTrainer inherits TrainerBase's (iteration + hooks only)
        assert "load_state_dict" not in vars(DefaultTrainer)
        assert compat.default_trainer_checkpoints_step_trainer() is False


def test_engine_writes_no_private_detectron2_state():
    """Version differences live in compat: the engine neither writes detectron2's private trainer attributes
    nor probes its classes' __dict__."""
    import os
    import re

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "metaalign_det", "engine")
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            with open(os.path.join(root, name)) as f:
                text = f.read()
            for bad in (r"\._period\b", r"\._data_loader_iter", r"__dict__", r"\bSimpleTrainer\.__init__\("):
                assert not re.search(bad, text), (name, bad)
