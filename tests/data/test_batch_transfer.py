"""Moving a batch to the model's device once per step (batch_to_device) and page-locked batches for CUDA.

No GPU here: the CPU path must be a no-op, and the copying path is exercised with torch's "meta" device
(tensors without storage), which goes through the same code as a CUDA device.
"""
import torch
from detectron2.structures import Boxes, Instances

from metaalign_det.data.paired_loader import (
    PairedDataLoader,
    batch_to_device,
    build_paired_train_loader,
)
from tests.helpers.configs import make_inputs, quick_cfg


def test_cpu_batch_for_cpu_is_returned_as_is():
    source, target = make_inputs()
    assert batch_to_device(source, "cpu") is source
    assert batch_to_device(target, torch.device("cpu"), non_blocking=False) is target
    assert batch_to_device(None, "cpu") is None


def test_batch_moves_tensors_and_instances_and_keeps_the_rest():
    source, _ = make_inputs(n_source=2, empty_source=False)
    source[0]["file_name"] = "a.jpg"
    moved = batch_to_device(source, "meta")
    assert len(moved) == 2 and moved is not source
    for before, after in zip(source, moved):
        assert after.keys() == before.keys()
        assert after["image"].device.type == "meta" and after["image"].shape == before["image"].shape
        inst = after["instances"]
        assert isinstance(inst, Instances) and inst.image_size == before["instances"].image_size
        assert isinstance(inst.gt_boxes, Boxes) and inst.gt_boxes.tensor.device.type == "meta"
        assert inst.gt_classes.device.type == "meta"
        assert inst.gt_boxes.tensor.shape == before["instances"].gt_boxes.tensor.shape
        assert before["image"].device.type == "cpu"  # the input batch is not modified
    assert moved[0]["file_name"] == "a.jpg" and moved[0]["height"] == source[0]["height"]


def test_loader_pins_nothing_on_cpu(tmp_path):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out")
    loader = build_paired_train_loader(cfg)
    assert isinstance(loader, PairedDataLoader) and loader.pin_memory is False
    source, target = next(iter(loader))
    assert all(not d["image"].is_pinned() for d in source + target)
    assert batch_to_device(source, cfg.MODEL.DEVICE) is source
