"""Domain-alignment losses as pure functions of tensors (no module state, no config).

Label convention, pinned by the tests: **source = 0, target = 1**. A discriminator logit ``z`` is the
log-odds that a location / ROI comes from the *target* domain, i.e. ``p = sigmoid(z) = P(target)``.

Every loss is a mean. An empty input (no locations / no ROIs) gives ``0`` that is still connected to the
graph (``logits.sum() * 0``), so every parameter in front of it still receives a (zero) gradient: DDP
requires a gradient for every trainable parameter in every step.
"""
from typing import List, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = [
    "SOURCE_LABEL",
    "TARGET_LABEL",
    "domain_bce",
    "domain_focal",
    "domain_softmax_focal",
    "domain_least_squares",
    "consistency_loss",
]

SOURCE_LABEL = 0
TARGET_LABEL = 1


def _check_domain(domain: int) -> float:
    if domain not in (SOURCE_LABEL, TARGET_LABEL):
        raise ValueError(
            f"domain must be SOURCE_LABEL ({SOURCE_LABEL}) or TARGET_LABEL ({TARGET_LABEL}), got {domain!r}"
        )
    return float(domain)


def domain_bce(logits: torch.Tensor, domain: int) -> torch.Tensor:
    """Binary cross-entropy of domain logits against one domain label, mean over all elements.

    Args:
        logits: any shape, e.g. (N, 1, H, W) per-location or (R, 1) per-ROI; log-odds of "target".
        domain: :data:`SOURCE_LABEL` (0) or :data:`TARGET_LABEL` (1); every element has this label.

    Returns:
        scalar tensor, ``mean(-y*log(sigmoid(z)) - (1-y)*log(1-sigmoid(z)))``; nats. ``log 2`` at ``z = 0``.
    """
    y = _check_domain(domain)
    if logits.numel() == 0:
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, y), reduction="mean")


def domain_focal(logits: torch.Tensor, domain: int, gamma: float = 5.0) -> torch.Tensor:
    """Focal binary cross-entropy (SWDA's weak global alignment), mean over all elements.

    ``p_t`` is the probability the discriminator gives to the *true* domain (``sigmoid(z)`` for target,
    ``1 - sigmoid(z)`` for source); the loss is ``-(1 - p_t)**gamma * log(p_t)``, so well-classified
    (easy, i.e. already domain-specific-looking) samples are down-weighted. ``gamma = 0`` is
    :func:`domain_bce`. SWDA uses gamma = 5 with a 2-way softmax, which equals a sigmoid of one logit.

    Args:
        logits: any shape; log-odds of "target".
        domain: 0 (source) or 1 (target).
        gamma: focusing exponent >= 0.

    Returns:
        scalar tensor (nats); at ``z = 0`` it is ``0.5**gamma * log 2``.
    """
    y = _check_domain(domain)
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    if logits.numel() == 0:
        return logits.sum() * 0.0
    # log p_t via logsigmoid for stability: log sigmoid(z) for target, log sigmoid(-z) = log(1 - sigmoid(z)) for source
    log_pt = F.logsigmoid(logits if y == 1.0 else -logits)
    pt = log_pt.exp()
    return (-((1.0 - pt) ** gamma) * log_pt).mean()


def domain_softmax_focal(logits: torch.Tensor, domain: int, gamma: float = 5.0) -> torch.Tensor:
    """SWDA's softmax focal loss of a two-way domain classifier, mean over the rows.

    ``-(1 - p)**gamma * log p`` with ``p = softmax(logits)[:, domain]`` (column 0 = source, 1 = target, as
    SWDA's ``FocalLoss(class_num=2, gamma=5)`` with labels 0 / 1). A 2-way softmax is the sigmoid of the logit
    difference, so this is :func:`domain_focal` of ``logits[:, 1] - logits[:, 0]`` (computed that way, in log
    space, for stability).

    Args:
        logits: (N, 2) per-image logits of the global discriminator.
        domain: 0 (source) or 1 (target).
        gamma: focusing exponent >= 0 (SWDA: 5).

    Returns:
        scalar tensor (nats).
    """
    if logits.dim() != 2 or logits.shape[1] != 2:
        raise ValueError(f"domain_softmax_focal expects (N, 2) logits, got shape {tuple(logits.shape)}")
    return domain_focal(logits[:, 1] - logits[:, 0], domain, gamma)


def domain_least_squares(probs: torch.Tensor, domain: int) -> torch.Tensor:
    """Least-squares domain loss of probabilities (SWDA's local discriminator), mean over all elements.

    ``mean((D - y)**2)`` with ``y`` the domain label: ``mean(D**2)`` for source (0), ``mean((1 - D)**2)`` for
    target (1). SWDA weights each domain's term by 0.5 (the caller applies it).

    Args:
        probs: any shape, e.g. (N, 1, H, W); sigmoid outputs in [0, 1] (P(target) per location).
        domain: 0 (source) or 1 (target).

    Returns:
        scalar tensor (squared probability units, in [0, 1]).
    """
    y = _check_domain(domain)
    if probs.numel() == 0:
        return probs.sum() * 0.0
    return ((probs - y) ** 2).mean()


def consistency_loss(
    img_probs: Union[torch.Tensor, Sequence[torch.Tensor]],
    ins_probs: torch.Tensor,
    ins_image_index: torch.Tensor,
) -> torch.Tensor:
    """DA-Faster's image/instance consistency regulariser (absolute difference, mean over instances).

    For each level ``l`` (one tensor per FPN level, or just one), each image ``i`` gets the mean of its
    image-level probabilities over all of its locations, ``m_l[i] = mean_{h,w} img_probs_l[i, :, h, w]``.
    Each instance ``r`` (an ROI of image ``i(r)``) is compared with it::

        L = 1/L_levels * sum_l  1/R * sum_r | m_l[i(r)] - q_r |

    where ``q_r = ins_probs[r]``: the L2 norm of a scalar difference in the DA-Faster paper, i.e. its
    absolute value, which is also what the reference implementation computes (``torch.abs``). Its gradient
    is ``sign(m - q) / R`` (0 at equality), so it does not fade as the two probabilities approach, unlike
    a square. The mean includes padded locations of a padded batch (as DA-Faster).
    Both sides keep their gradients (neither is detached), as in DA-Faster's reference implementation:
    the image-level and instance-level discriminators are pulled towards each other.

    Args:
        img_probs: (N, 1, H, W) probabilities in [0, 1] (sigmoid of the image-level logits), or a list of
            such tensors, one per feature level (H, W may differ per level; N must not).
        ins_probs: (R,) or (R, 1) instance-level probabilities in [0, 1].
        ins_image_index: (R,) int64, the image (0..N-1) each instance belongs to.

    Returns:
        scalar tensor (probability units, in [0, 1]). 0 connected to the graph when ``R == 0``.
    """
    levels: List[torch.Tensor] = [img_probs] if torch.is_tensor(img_probs) else list(img_probs)
    if not levels:
        raise ValueError("consistency_loss needs at least one image-level probability map")
    q = ins_probs.reshape(-1)
    idx = ins_image_index.reshape(-1).long()
    if idx.numel() != q.numel():
        raise ValueError(
            f"consistency_loss: {q.numel()} instance probabilities but {idx.numel()} image indices"
        )
    if q.numel() == 0:
        return q.sum() * 0.0 + sum(p.sum() for p in levels) * 0.0
    per_level = []
    for p in levels:
        per_image_mean = p.flatten(1).mean(dim=1)  # (N,)
        per_level.append((per_image_mean[idx] - q).abs().mean())
    return torch.stack(per_level).mean()
