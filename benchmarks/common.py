"""Shared pieces of the benchmarks: configs built in code and synthetic batches (no dataset needed)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import metaalign_det  # noqa: E402,F401

# isort: split
from detectron2.structures import Boxes, Instances  # noqa: E402

from metaalign_det.cli import setup_cfg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def preset_cfg(preset, device, extra=()):
    """``gpu``: R50-C4 DA-Faster at 600x1200, the set-up of the H200 step timings in docs/benchmarks.md;
    ``cpu``: the quick R18-FPN schedule."""
    if preset == "gpu":
        # Random weights (nothing can be downloaded): an untrained R50 with FrozenBN has losses in the
        # thousands and diverges under any update, so the weights stay fixed (lr 0, hence alpha 0). Every
        # step still runs the full computation of its mode, so the timing is that of a real step.
        opts = ["MODEL.RESNETS.DEPTH", "50", "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", "8",
                "SOLVER.BASE_LR", "0.0"]
        cfg = setup_cfg(os.path.join(ROOT, "configs", "Base-DA-RCNN-C4.yaml"), opts + list(extra) +
                        ["MODEL.DEVICE", device], freeze=False)
    else:
        cfg = setup_cfg(os.path.join(ROOT, "configs", "quick_schedules", "Base-quick-R18-FPN.yaml"),
                        ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.DEVICE", device] + list(extra),
                        freeze=False)
    return cfg


def synthetic_batch(n, height, width, num_classes, device, labelled=True, seed=0, boxes_per_image=6):
    """``n`` detectron2 input dicts with random images (3, H, W) in 0..255 and random boxes (XYXY px)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        d = {"image": (torch.rand(3, height, width, generator=g) * 255).to(device),
             "height": height, "width": width}
        if labelled:
            xy = torch.rand(boxes_per_image, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
            wh = (0.1 + 0.2 * torch.rand(boxes_per_image, 2, generator=g)) * torch.tensor([width, height])
            inst = Instances((height, width))
            inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1).to(device))
            inst.gt_classes = torch.randint(num_classes, (boxes_per_image,), generator=g).to(device)
            d["instances"] = inst
        out.append(d)
    return out


class Repeat:
    """An endless loader that yields the same (source, target) batch pair: the step alone, without data loading."""

    def __init__(self, pair):
        self.pair = pair

    def __iter__(self):
        while True:
            yield self.pair


def emit_table(lines, output=None):
    """Print a Markdown table (its lines) and, with ``output``, write it to that file."""
    table = "\n".join(lines)
    print("\n" + table)
    if output:
        with open(output, "w") as f:
            f.write(table + "\n")
