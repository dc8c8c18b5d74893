"""Proxy A-distance (Ben-David et al., 2007/2010): how well a *linear* classifier tells two feature sets apart.

    PAD = 2 (1 - 2 eps)

with ``eps`` the held-out error of a freshly trained linear domain classifier. 0 means the domains are
indistinguishable to it (eps = 0.5), 2 means it separates them perfectly (eps = 0). Lower after adaptation =
features are more domain-invariant (for that classifier family).

Pure torch, no detectron2: the features come in as tensors, one row per sample, with a *group* id per row
(the image a sample comes from). Samples of one image never end up on both sides of a train/test split, so
the classifier cannot score by recognising the image instead of the domain.

Protocol (deterministic for a given ``seed``):

1. groups of each domain are shuffled and split into two halves (2-fold cross-fitting);
2. per fold, features are standardised with the training half's mean/std, and an L2-regularised logistic
   regression is fitted for each ``l2`` in ``l2_grid``; the one with the lowest error on held-out training
   groups (fit on half of the training half's groups, select on the other half) is refitted on the whole
   training half (model selection never sees the test half);
3. eps = test error, averaged over both folds with each domain weighted equally (balanced error, so unequal
   sample counts per domain cannot move it).
"""
import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch

__all__ = ["PADResult", "proxy_a_distance", "fit_logistic"]


@dataclass(frozen=True)
class PADResult:
    """``pad`` = 2(1 - 2 ``error``) (may be slightly negative when the classifier is worse than chance);
    ``error``: balanced held-out error in [0, 1]; ``n_source`` / ``n_target``: samples used; ``dim``: feature
    size; ``l2``: the regularisation chosen in each fold."""

    pad: float
    error: float
    n_source: int
    n_target: int
    dim: int
    l2: Tuple[float, ...]

    def as_dict(self) -> dict:
        return {"pad": self.pad, "error": self.error, "n_source": self.n_source, "n_target": self.n_target,
                "dim": self.dim, "l2": list(self.l2)}


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int = 100) -> Tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression by L-BFGS (float64, full batch).

    Args:
        x: (N, D) features (standardised by the caller); y: (N,) labels in {0, 1}; l2: penalty on the weights
            (not the bias), per sample: ``mean BCE + l2/2 * ||w||^2``.

    Returns:
        ``(w, b)``: (D,) weights and a 0-d bias; ``x @ w + b`` is the log-odds of label 1.
    """
    x = x.double()
    y = y.double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _balanced_error(x, y, w, b) -> float:
    pred = (x.double() @ w + b) > 0
    errs = []
    for label in (0, 1):
        m = y == label
        if m.any():
            errs.append((pred[m] != bool(label)).double().mean().item())
    return sum(errs) / len(errs)


def _split_groups(groups: torch.Tensor, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of two halves of the rows, split by group (shuffled)."""
    uniq = torch.unique(groups)
    perm = uniq[torch.randperm(len(uniq), generator=gen)]
    first = perm[: len(perm) // 2]
    in_first = torch.isin(groups, first)
    return in_first, ~in_first


def _standardise(train: torch.Tensor, *others: torch.Tensor):
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train,) + others]


def proxy_a_distance(
    source: torch.Tensor,
    target: torch.Tensor,
    source_groups: torch.Tensor = None,
    target_groups: torch.Tensor = None,
    l2_grid: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0),
    seed: int = 0,
) -> PADResult:
    """Proxy A-distance between two feature sets (see the module docstring for the protocol).

    Args:
        source, target: (Ns, D) and (Nt, D) float features (any float dtype, any device; computed on CPU in
            float64).
        source_groups, target_groups: (Ns,) and (Nt,) int ids of the image each row comes from (default: one
            group per row). Each domain needs at least 4 groups.
        l2_grid: candidate L2 penalties, chosen per fold on held-out training groups.
        seed: seeds the group splits.

    Returns:
        :class:`PADResult`.

    Raises:
        ValueError: shapes disagree, non-finite features, or fewer than 4 groups in a domain.
    """
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"proxy_a_distance: expected (N, D) features of equal D, got {tuple(source.shape)} "
                         f"and {tuple(target.shape)}")
    xs, xt = source.detach().double().cpu(), target.detach().double().cpu()
    if not (torch.isfinite(xs).all() and torch.isfinite(xt).all()):
        raise ValueError("proxy_a_distance: features contain NaN or inf")
    gs = torch.arange(len(xs)) if source_groups is None else torch.as_tensor(source_groups).cpu().long()
    gt = torch.arange(len(xt)) if target_groups is None else torch.as_tensor(target_groups).cpu().long()
    if len(gs) != len(xs) or len(gt) != len(xt):
        raise ValueError("proxy_a_distance: one group id per feature row is needed")
    for name, g in (("source", gs), ("target", gt)):
        if len(torch.unique(g)) < 4:
            raise ValueError(f"proxy_a_distance: the {name} features come from fewer than 4 images/groups")
    gen = torch.Generator().manual_seed(int(seed))
    s_halves = _split_groups(gs, gen)
    t_halves = _split_groups(gt, gen)
    errors, chosen = [], []
    for fold in (0, 1):
        s_tr, s_te = s_halves[fold], s_halves[1 - fold]
        t_tr, t_te = t_halves[fold], t_halves[1 - fold]
        # model selection inside the training half: fit on half of its groups, score on the other half
        s_fit, s_sel = _split_groups(gs[s_tr], gen)
        t_fit, t_sel = _split_groups(gt[t_tr], gen)
        x_tr = torch.cat([xs[s_tr], xt[t_tr]])
        y_tr = torch.cat([torch.zeros(int(s_tr.sum())), torch.ones(int(t_tr.sum()))])
        fit_mask = torch.cat([s_fit, t_fit])
        x_fit, x_sel = _standardise(x_tr[fit_mask], x_tr[~fit_mask])
        best = None
        for l2 in l2_grid:
            w, b = fit_logistic(x_fit, y_tr[fit_mask], l2)
            err = _balanced_error(x_sel, y_tr[~fit_mask], w, b)
            if best is None or err < best[0] - 1e-12:
                best = (err, l2)
        l2 = best[1]
        x_train, x_test = _standardise(x_tr, torch.cat([xs[s_te], xt[t_te]]))
        y_test = torch.cat([torch.zeros(int(s_te.sum())), torch.ones(int(t_te.sum()))])
        w, b = fit_logistic(x_train, y_tr, l2)
        errors.append(_balanced_error(x_test, y_test, w, b))
        chosen.append(float(l2))
    err = sum(errors) / len(errors)
    pad = 2.0 * (1.0 - 2.0 * err)
    if not math.isfinite(pad):  # pragma: no cover - guarded by the finite check above
        raise ValueError("proxy_a_distance: non-finite result")
    return PADResult(pad=pad, error=err, n_source=len(xs), n_target=len(xt), dim=xs.shape[1], l2=tuple(chosen))
