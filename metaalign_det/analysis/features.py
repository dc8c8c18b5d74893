"""What a detector's features look like to a domain classifier, and how its two gradients agree.

:func:`domain_features` runs a detector (``GeneralizedRCNN`` or ``DomainAdaptiveRCNN``, eval mode, no
gradients) over a list of images and returns three representations per image, each with the index of the
image every row comes from (for :func:`metaalign_det.analysis.pad.proxy_a_distance`):

``pooled``     (N, C*L): each chosen backbone level averaged over the image's own (unpadded) extent and
               concatenated -- a global image statistic. Fog is visible in global statistics, so this one
               saturates (PAD ~ 2) for every model on strongly shifted pairs.
``locations``  (N*K, C): K random locations per image and level (seeded), the per-location features the
               image-level discriminator sees.
``roi``        (N*R, D): box-head features of the top-R RPN proposals per image (inference mode), i.e. what
               the instance-level discriminator and the box predictor see. Needs no labels.

:func:`gradient_agreement` measures ``cos(grad L_align, grad L_det)`` at the current weights on a few
training pairs (the quantity MetaAlign raises), with the trainer's own loss evaluator.
"""
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from ..modeling.meta_arch import roi_box_features

__all__ = ["REPRESENTATIONS", "domain_features", "gradient_agreement"]

REPRESENTATIONS = ("pooled", "locations", "roi")


def _valid_extent(size_hw: Tuple[int, int], stride: int) -> Tuple[int, int]:
    return max(1, math.ceil(size_hw[0] / stride)), max(1, math.ceil(size_hw[1] / stride))


@torch.no_grad()
def domain_features(
    model: torch.nn.Module,
    batches: Iterable[List[dict]],
    levels: Sequence[str],
    rois_per_image: int = 32,
    locations_per_image: int = 16,
    seed: int = 0,
) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Features of every image in ``batches`` (see the module docstring).

    Args:
        model: a detectron2 ``GeneralizedRCNN`` (or subclass) with a proposal generator; put in eval mode
            here (and left so).
        batches: iterable of lists of detectron2 input dicts (``"image"`` (C, H, W) 0-255, ``"height"``,
            ``"width"``), e.g. a test loader; annotations are not read.
        levels: backbone output names for ``pooled`` / ``locations`` (e.g. ``["p3", "p4", "p5"]``); every
            name must be a backbone output of equal channel count.
        rois_per_image: R, top proposals by objectness per image for ``roi`` (fewer if the RPN gives fewer).
        locations_per_image: K, random locations per image and level for ``locations``.
        seed: seeds the location sampling.

    Returns:
        dict representation -> ``(features float32 (rows, D) on CPU, image index int64 (rows,))``; the image
        index counts images in the order they were seen.
    """
    model.eval()
    shapes = model.backbone.output_shape()
    unknown = [f for f in levels if f not in shapes]
    if unknown:
        raise ValueError(f"feature levels {unknown} are not backbone outputs (it has {sorted(shapes)})")
    gen = torch.Generator().manual_seed(int(seed))
    out = {k: ([], []) for k in REPRESENTATIONS}
    image_index = 0
    for inputs in batches:
        images = model.preprocess_image(inputs)
        feats = model.backbone(images.tensor)
        sizes = images.image_sizes  # (h, w) of each image before padding
        pooled = []
        for f in levels:
            fmap = feats[f]
            stride = shapes[f].stride
            per_image = []
            for i, hw in enumerate(sizes):
                h, w = _valid_extent(hw, stride)
                region = fmap[i, :, :h, :w]
                per_image.append(region.mean(dim=(1, 2)))
                ys = torch.randint(0, h, (locations_per_image,), generator=gen)
                xs = torch.randint(0, w, (locations_per_image,), generator=gen)
                loc = region[:, ys.to(region.device), xs.to(region.device)].t()  # (K, C)
                out["locations"][0].append(loc.float().cpu())
                out["locations"][1].append(torch.full((len(loc),), image_index + i, dtype=torch.long))
            pooled.append(torch.stack(per_image))
        out["pooled"][0].append(torch.cat(pooled, dim=1).float().cpu())
        out["pooled"][1].append(torch.arange(image_index, image_index + len(sizes)))
        if model.proposal_generator is not None and rois_per_image > 0:
            proposals, _ = model.proposal_generator(images, feats, None)
            boxes = []
            for p in proposals:
                k = min(rois_per_image, len(p))
                boxes.append(Boxes(p.proposal_boxes.tensor[p.objectness_logits.topk(k).indices]))
            x = roi_box_features(model.roi_heads, feats, boxes)
            out["roi"][0].append(x.float().cpu())
            out["roi"][1].append(torch.repeat_interleave(
                torch.arange(image_index, image_index + len(boxes)), torch.tensor([len(b) for b in boxes])))
        image_index += len(sizes)
    result = {}
    for k, (xs, gs) in out.items():
        if xs:
            result[k] = (torch.cat(xs), torch.cat(gs))
    return result


def gradient_agreement(model: torch.nn.Module, pairs: Iterable[Tuple[list, list]], num_batches: int,
                       seed: int = 0) -> Optional[List[float]]:
    """``cos(grad L_align, grad L_det)`` over the trainable parameters both touch, at the current weights,
    for each of ``num_batches`` (source, target) training pairs; None when the model has no alignment loss
    (no ``DomainAdaptiveRCNN`` with a DA head).

    The model is put in training mode for this (ROI sampling, dropout: seeded per batch with ``seed``) and
    back to eval mode afterwards; its weights and ``.grad`` are not changed.
    """
    if not getattr(model, "alignment_enabled", False):
        return None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    cosines = []
    model.train()
    # detectron2's training-mode heads write statistics to an event storage: give them a throw-away one
    with EventStorage():
        _agreement(model, params, pairs, num_batches, seed, cosines)
    model.eval()
    return cosines


def _agreement(model, params, pairs, num_batches, seed, cosines):
    from ..engine.loss_evaluator import LossEvaluator
    from ..meta import meta_align_grads

    try:
        for i, (source, target) in enumerate(pairs):
            if i >= num_batches:
                break
            ev = LossEvaluator(model, source, target, seed=seed * 1_000_003 + i)
            _, stats = meta_align_grads(params, ev.align_loss, ev.det_loss, inner_lr=0.0, order="none",
                                        compute_cos=True)
            cosines.append(float(stats["grad_cos"]))
    finally:
        model.eval()
