"""Domain losses against hand-computed values; label convention source = 0, target = 1."""
import math

import pytest
import torch

import metaalign_det  # noqa: F401
from metaalign_det.modeling.losses import (
    SOURCE_LABEL,
    TARGET_LABEL,
    consistency_loss,
    domain_bce,
    domain_focal,
)


def test_labels_pinned():
    assert SOURCE_LABEL == 0
    assert TARGET_LABEL == 1


def test_domain_bce_hand_values():
    z = torch.tensor([0.0, 2.0, -1.0])
    # source (y=0): -log(1 - sigmoid(z)) = log(1 + e^z)
    src = (math.log(2.0) + math.log(1 + math.e**2) + math.log(1 + math.e**-1)) / 3
    # target (y=1): -log(sigmoid(z)) = log(1 + e^-z)
    tgt = (math.log(2.0) + math.log(1 + math.e**-2) + math.log(1 + math.e**1)) / 3
    assert domain_bce(z, SOURCE_LABEL).item() == pytest.approx(src, rel=1e-6)
    assert domain_bce(z, TARGET_LABEL).item() == pytest.approx(tgt, rel=1e-6)


def test_domain_bce_mean_over_all_elements_any_shape():
    z = torch.zeros(2, 1, 3, 5)
    assert domain_bce(z, 1).item() == pytest.approx(math.log(2.0))
    z[0, 0, 0, 0] = 100.0  # one confident "target" location: for source it costs ~100 nats, spread over 30
    assert domain_bce(z, 0).item() == pytest.approx((29 * math.log(2.0) + 100.0) / 30, rel=1e-4)


def test_domain_focal_hand_values():
    z = torch.tensor([0.0, 1.5])
    gamma = 2.0
    p = [0.5, 1 / (1 + math.exp(-1.5))]
    # target: p_t = p
    tgt = sum(-((1 - pi) ** gamma) * math.log(pi) for pi in p) / 2
    # source: p_t = 1 - p
    src = sum(-((pi) ** gamma) * math.log(1 - pi) for pi in p) / 2
    assert domain_focal(z, 1, gamma).item() == pytest.approx(tgt, rel=1e-6)
    assert domain_focal(z, 0, gamma).item() == pytest.approx(src, rel=1e-6)
    # gamma 0 is plain BCE
    assert domain_focal(z, 0, 0.0).item() == pytest.approx(domain_bce(z, 0).item(), rel=1e-6)
    # at z = 0 the SWDA setting gamma = 5 gives 0.5**5 * log 2
    assert domain_focal(torch.zeros(4), 0, 5.0).item() == pytest.approx(0.5**5 * math.log(2.0), rel=1e-6)


def test_bad_domain_rejected():
    with pytest.raises(ValueError, match="SOURCE_LABEL"):
        domain_bce(torch.zeros(2), 2)
    with pytest.raises(ValueError, match="gamma"):
        domain_focal(torch.zeros(2), 0, -1.0)


def test_consistency_hand_values():
    # image 0 mean prob 0.25, image 1 mean prob 0.75
    img = torch.tensor([[0.0, 0.5, 0.25, 0.25], [1.0, 0.5, 1.0, 0.5]]).view(2, 1, 2, 2)
    ins = torch.tensor([0.5, 0.25, 1.0])
    idx = torch.tensor([0, 0, 1])
    expected = (abs(0.25 - 0.5) + abs(0.25 - 0.25) + abs(0.75 - 1.0)) / 3
    assert consistency_loss(img, ins, idx).item() == pytest.approx(expected)
    # (R, 1) instance probabilities are accepted too
    assert consistency_loss(img, ins[:, None], idx).item() == pytest.approx(expected)


def test_consistency_levels_are_averaged():
    lvl_a = torch.full((1, 1, 4, 4), 0.2)
    lvl_b = torch.full((1, 1, 2, 3), 0.6)
    ins = torch.tensor([0.4, 0.4])
    idx = torch.zeros(2, dtype=torch.long)
    expected = (abs(0.2 - 0.4) + abs(0.6 - 0.4)) / 2
    assert consistency_loss([lvl_a, lvl_b], ins, idx).item() == pytest.approx(expected)


def test_consistency_gradients_reach_both_sides():
    img = torch.full((1, 1, 2, 2), 0.8, requires_grad=True)
    ins = torch.tensor([0.3, 0.1], requires_grad=True)
    consistency_loss(img, ins, torch.tensor([0, 0])).backward()
    # d/dq |m - q| / R = -sign(m - q) / R  (m = 0.8 > q for both ROIs)
    torch.testing.assert_close(ins.grad, torch.tensor([-1 / 2, -1 / 2]))
    # d/dp_loc = sum_r sign(m - q_r) / R * 1/4
    torch.testing.assert_close(img.grad, torch.full((1, 1, 2, 2), (1 + 1) / 2 / 4))


def test_consistency_is_the_absolute_difference_not_the_square():
    """DA-Faster (paper and reference code) penalises |m - q|: the loss is linear in the gap."""
    img = torch.full((1, 1, 1, 1), 0.9)
    for q in (0.8, 0.5, 0.1):
        loss = consistency_loss(img, torch.tensor([q]), torch.tensor([0]))
        assert loss.item() == pytest.approx(abs(0.9 - q))
    # a gap of 0.1 costs 0.1 (a square would give 0.01)
    assert consistency_loss(img, torch.tensor([0.8]), torch.tensor([0])).item() == pytest.approx(0.1)


def test_empty_inputs_give_connected_zero():
    z = torch.zeros(0, 1, requires_grad=True)
    for loss in (domain_bce(z, 0), domain_focal(z, 1, 5.0)):
        assert loss.item() == 0.0
        assert loss.requires_grad
    img = torch.rand(2, 1, 3, 3, requires_grad=True)
    q = torch.zeros(0, requires_grad=True)
    loss = consistency_loss(img, q, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()  # connected: every input gets a (zero) gradient, which DDP needs
    assert img.grad is not None and torch.count_nonzero(img.grad) == 0


def test_consistency_index_length_mismatch():
    with pytest.raises(ValueError, match="image indices"):
        consistency_loss(torch.rand(1, 1, 2, 2), torch.rand(3), torch.zeros(2, dtype=torch.long))
