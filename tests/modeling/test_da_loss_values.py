"""The DA heads' loss values on a fixed tiny model and fixed inputs, pinned.

Every other DA test checks properties (shapes, gradients, hand-computed values of the loss functions on
their own); this one pins the numbers the whole DomainAdaptiveRCNN produces -- which features feed the
image head, which ROIs feed the instance head, how the consistency term pairs them -- so that no refactor
changes them unnoticed. A CHANGE HERE MUST BE DELIBERATE: update the pinned values only together with the
change in the loss definition that explains them (and say so in the commit). The values were computed with
DA-Faster's consistency loss: the mean over ROIs of the absolute difference |m - q| between the image-level
probability m (averaged over the ROI's image, per level, levels averaged) and the ROI's instance-level
probability q.
"""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from tests.helpers.configs import enable_da, make_inputs, tiny_c4_cfg, tiny_fpn_cfg

DA_KEYS = ("loss_da_img", "loss_da_ins", "loss_da_cst")
CFGS = {"c4": tiny_c4_cfg, "fpn": tiny_fpn_cfg}

# (arch, discriminator init) -> (loss_da_img, loss_da_ins, loss_da_cst)
# Computed once (torch 2.14 CPU, 1 and 2 threads agree to 1e-7). A CHANGE HERE MUST BE DELIBERATE.
PINNED = {
    ("c4", "default"): (0.69306314, 0.70394552, 0.10143667),
    ("fpn", "default"): (0.69314498, 0.69177490, 0.013563732),
    ("c4", "wide"): (2.3369110, 1.0780786, 0.51057458),
    ("fpn", "wide"): (1.4797274, 0.73826158, 0.33236933),
}


def da_losses(arch, init):
    """The three DA losses of the tiny ``arch`` model (seed 0, consistency weight 1) on make_inputs().

    ``init="default"``: the heads as built (DA-Faster's small init: logits near 0, losses near log 2).
    ``init="wide"``: every discriminator weight and bias redrawn from N(0, 0.03^2) with a fixed generator, so
    that the logits are far from 0 and each loss is sensitive to what feeds it.
    """
    cfg = enable_da(CFGS[arch](), cst_weight=1.0)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    if init == "wide":
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith(("da_img_head.", "da_ins_head.")):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.03)
    source, target = make_inputs(n_source=2, n_target=1)
    torch.manual_seed(1)  # ROI sampling and the instance head's dropout draw from the global RNG
    with EventStorage():
        losses = model(source, target)
    return tuple(losses[k].item() for k in DA_KEYS)


@pytest.mark.parametrize("arch, init", list(PINNED))
def test_da_loss_values_are_pinned(arch, init):
    got = da_losses(arch, init)
    for key, value, pinned in zip(DA_KEYS, got, PINNED[(arch, init)]):
        assert value == pytest.approx(pinned, rel=1e-5, abs=1e-6), (key, value, pinned)
