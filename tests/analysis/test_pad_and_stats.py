"""Proxy A-distance (linear domain classifier, split by image) and the seed-study statistics."""
import math

import pytest
import torch

from metaalign_det.analysis.pad import fit_logistic, proxy_a_distance
from metaalign_det.analysis.stats import mean_ci, paired_difference, seeds_for_half_width, t_quantile_975


def _gaussians(shift, n=200, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, d, generator=g)
    xt = torch.randn(n, d, generator=g)
    xt[:, 0] += shift
    return xs, xt


def test_pad_is_near_zero_for_one_distribution_and_two_for_separable_ones():
    same = proxy_a_distance(*_gaussians(0.0))
    assert abs(same.pad) < 0.35 and 0.4 < same.error < 0.6
    far = proxy_a_distance(*_gaussians(20.0))
    assert far.pad == pytest.approx(2.0) and far.error == 0.0
    # in between: the Bayes error of two unit Gaussians 1.0 apart along one axis is Phi(-0.5) = 0.309
    mid = proxy_a_distance(*_gaussians(1.0, n=2000))
    assert mid.error == pytest.approx(0.309, abs=0.04)
    assert mid.pad == pytest.approx(2 * (1 - 2 * mid.error))
    assert same.pad < mid.pad < far.pad


def test_pad_is_deterministic_and_reports_its_inputs():
    xs, xt = _gaussians(1.0)
    a, b = proxy_a_distance(xs, xt, seed=3), proxy_a_distance(xs, xt, seed=3)
    assert a == b
    assert (a.n_source, a.n_target, a.dim) == (200, 200, 8)
    assert len(a.l2) == 2 and set(a.as_dict()) == {"pad", "error", "n_source", "n_target", "dim", "l2"}


def test_samples_of_one_image_never_straddle_the_split():
    """Rows that only identify their image (no domain signal) must not give a PAD above chance: with a
    per-row split, a classifier could memorise the image id; split by image it cannot."""
    g = torch.Generator().manual_seed(0)
    n_img, per = 40, 10
    # each image has its own random code, repeated (plus small noise) on all of its rows; no domain shift
    codes_s, codes_t = torch.randn(n_img, 16, generator=g), torch.randn(n_img, 16, generator=g)
    xs = codes_s.repeat_interleave(per, 0) + 0.01 * torch.randn(n_img * per, 16, generator=g)
    xt = codes_t.repeat_interleave(per, 0) + 0.01 * torch.randn(n_img * per, 16, generator=g)
    groups = torch.arange(n_img).repeat_interleave(per)
    by_image = proxy_a_distance(xs, xt, groups, groups)
    by_row = proxy_a_distance(xs, xt)  # leaks: the same image's rows on both sides
    assert by_image.pad < 0.6
    assert by_row.pad > by_image.pad + 0.5


def test_pad_rejects_bad_input():
    xs, xt = _gaussians(0.0, n=10)
    with pytest.raises(ValueError, match="equal D"):
        proxy_a_distance(xs, xt[:, :3])
    with pytest.raises(ValueError, match="fewer than 4"):
        proxy_a_distance(xs, xt, torch.zeros(10, dtype=torch.long), None)
    bad = xs.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        proxy_a_distance(bad, xt)
    with pytest.raises(ValueError, match="one group id"):
        proxy_a_distance(xs, xt, torch.arange(3), None)


def test_logistic_regression_fits_a_separable_problem():
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    y = torch.tensor([0.0, 0.0, 1.0, 1.0])
    w, b = fit_logistic(x, y, l2=1e-2)
    assert w.item() > 0 and ((x.double() @ w + b > 0).double() == y.double()).all()


def test_t_quantiles_and_mean_ci():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(4) == 2.776 and t_quantile_975(30) == 2.042
    assert t_quantile_975(1000) == pytest.approx(1.962, abs=0.002)
    with pytest.raises(ValueError):
        t_quantile_975(0)
    c = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert c["mean"] == 3.0 and c["std"] == pytest.approx(math.sqrt(2.5))
    assert c["half_width"] == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    assert c["low"] == pytest.approx(3.0 - c["half_width"])
    one = mean_ci([7.0])
    assert one["mean"] == 7.0 and one["half_width"] is None
    with pytest.raises(ValueError):
        mean_ci([])


def test_paired_difference_uses_shared_seeds_only():
    a = {0: 10.0, 1: 12.0, 2: 11.0, 5: 99.0}
    b = {0: 9.0, 1: 10.0, 2: 11.0, 3: 0.0}
    d = paired_difference(a, b)
    assert d["seeds"] == [0, 1, 2] and d["diffs"] == [1.0, 2.0, 0.0]
    assert d["mean"] == pytest.approx(1.0) and d["n"] == 3
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def test_seeds_for_half_width_is_the_smallest_count_that_reaches_the_target():
    # std 3, target 3: n = 6 gives 2.571 * 3 / sqrt(6) = 3.15 > 3, n = 7 gives 2.447 * 3 / sqrt(7) = 2.77
    assert seeds_for_half_width(3.0, 3.0) == 7
    for std, target in ((4.0, 3.0), (8.0, 3.0), (1.0, 0.5), (5.5, 3.0)):
        n = seeds_for_half_width(std, target)
        assert t_quantile_975(n - 1) * std / math.sqrt(n) <= target
        assert n == 2 or t_quantile_975(n - 2) * std / math.sqrt(n - 1) > target
    assert seeds_for_half_width(0.0, 3.0) == 2  # no spread: the fewest seeds an interval needs
    assert seeds_for_half_width(100.0, 0.1, max_n=50) is None
    for bad in ((-1.0, 3.0), (3.0, 0.0), (float("nan"), 3.0)):
        with pytest.raises(ValueError):
            seeds_for_half_width(*bad)
