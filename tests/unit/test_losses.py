"""Losses against hand-computed values, torchvision's focal loss, and their weighting rules."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from birdclef.config import TrainConfig
from birdclef.errors import ConfigError
from birdclef.train.losses import (BCELoss, FocalBCELoss, FocalLoss, create_loss, list_losses, loss_from_config)

LOGITS = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
TARGET = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# BCE per element: -log(sigmoid(x)) for t = 1, -log(1 - sigmoid(x)) for t = 0.
BCE_00 = math.log(2.0)  # x=0, t=1
BCE_01 = math.log(1.0 + math.exp(2.0))  # x=2, t=0
BCE_10 = math.log(1.0 + math.exp(-1.0))  # x=-1, t=0
BCE_11 = math.log(1.0 + math.exp(-1.0))  # x=1, t=1

# Focal (alpha 0.25, gamma 2): alpha_t * (1 - p_t)^2 * BCE, alpha_t = 0.25 for t=1 and 0.75 for t=0.
FOCAL_00 = 0.25 * (1 - 0.5) ** 2 * BCE_00  # p_t = sigmoid(0)
FOCAL_01 = 0.75 * sig(2.0) ** 2 * BCE_01  # p_t = 1 - sigmoid(2), so 1 - p_t = sigmoid(2)
FOCAL_10 = 0.75 * sig(-1.0) ** 2 * BCE_10  # 1 - p_t = sigmoid(-1)
FOCAL_11 = 0.25 * (1 - sig(1.0)) ** 2 * BCE_11  # p_t = sigmoid(1)


def test_bce_equals_hand_computed_mean():
    expected = (BCE_00 + BCE_01 + BCE_10 + BCE_11) / 4
    assert create_loss("bce")(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_focal_equals_hand_computed_mean_and_torchvision():
    expected = (FOCAL_00 + FOCAL_01 + FOCAL_10 + FOCAL_11) / 4
    loss = create_loss("focal", alpha=0.25, gamma=2.0)(LOGITS, TARGET)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    reference = sigmoid_focal_loss(LOGITS, TARGET, alpha=0.25, gamma=2.0, reduction="mean")
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_focal_bce_is_0_6_bce_plus_1_4_focal():
    bce = (BCE_00 + BCE_01 + BCE_10 + BCE_11) / 4
    focal = (FOCAL_00 + FOCAL_01 + FOCAL_10 + FOCAL_11) / 4
    loss = create_loss("focal_bce")(LOGITS, TARGET)
    assert loss.item() == pytest.approx(0.6 * bce + 1.4 * focal, rel=1e-6)
    reweighted = create_loss("focal_bce", bce_weight=1.0, focal_weight=0.0)(LOGITS, TARGET)
    assert reweighted.item() == pytest.approx(bce, rel=1e-6)


def test_focal_with_gamma_0_and_no_alpha_is_bce():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=gen) * 3
    target = torch.rand(8, 5, generator=gen)
    focal = FocalLoss(alpha=-1.0, gamma=0.0)(logits, target)
    torch.testing.assert_close(focal, BCELoss()(logits, target))


def test_sample_weight_is_a_weighted_mean_of_per_sample_losses():
    row0 = (BCE_00 + BCE_01) / 2
    row1 = (BCE_10 + BCE_11) / 2
    loss = create_loss("bce")(LOGITS, TARGET, torch.tensor([1.0, 3.0]))
    assert loss.item() == pytest.approx((1 * row0 + 3 * row1) / 4, rel=1e-6)
    only_second = create_loss("focal_bce")(LOGITS, TARGET, torch.tensor([0.0, 2.0]))
    assert only_second.item() == pytest.approx(create_loss("focal_bce")(LOGITS[1:], TARGET[1:]).item(), rel=1e-6)
    ones = create_loss("focal")(LOGITS, TARGET, torch.ones(2))
    assert ones.item() == pytest.approx(create_loss("focal")(LOGITS, TARGET).item(), rel=1e-6)


def test_soft_masked_weighted_bce_equals_a_hand_value():
    """Distillation's loss: BCE on soft targets, masked (unknown) targets skipped, sample weights."""
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.5, 3.0]])
    target = torch.tensor([[0.3, 0.9, 0.0], [0.6, 0.2, 0.7]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    weight = torch.tensor([1.0, 3.0])

    def bce(z: float, t: float) -> float:
        p = 1 / (1 + math.exp(-z))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    known = [(0, 0), (0, 1), (1, 0), (1, 2)]
    expect = sum(weight[b].item() * bce(logits[b, k].item(), target[b, k].item()) for b, k in known)
    expect /= sum(weight[b].item() for b, _ in known)
    assert BCELoss()(logits, target, weight, mask).item() == pytest.approx(expect, rel=1e-6)
    changed = target.clone()
    changed[~mask] = 1.0  # what a masked target says does not matter
    assert BCELoss()(logits, changed, weight, mask).item() == pytest.approx(expect, rel=1e-6)
    with pytest.raises(ValueError, match="mask must have shape"):
        BCELoss()(logits, target, weight, mask[:, :2])


def test_soft_targets_have_their_minimum_at_the_target_logit():
    target = torch.tensor([[0.3, 0.8]])
    logits = torch.log(target / (1 - target)).requires_grad_(True)  # sigmoid(logits) == target
    loss = create_loss("bce")(logits, target)
    expected = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7) + 0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)  # the entropy of the targets
    loss.backward()
    assert logits.grad.abs().max().item() < 1e-6
    assert torch.isfinite(create_loss("focal_bce")(logits, target)).item()


@pytest.mark.parametrize("name", ["bce", "focal", "focal_bce"])
def test_losses_backpropagate_and_check_shapes(name):
    logits = torch.zeros(3, 4, requires_grad=True)
    create_loss(name)(logits, torch.ones(3, 4)).backward()
    assert (logits.grad < 0).all()  # positives push every logit up
    with pytest.raises(ValueError, match="same shape"):
        create_loss(name)(logits, torch.ones(3, 5))
    with pytest.raises(ValueError, match="sample_weight"):
        create_loss(name)(logits, torch.ones(3, 4), torch.ones(4))


def test_registry_names_and_unknown_loss():
    assert list_losses() == ["bce", "focal", "focal_bce"]
    with pytest.raises(ConfigError, match="focal_bce"):
        create_loss("dice")


def test_loss_from_config_passes_focal_parameters():
    loss = loss_from_config(TrainConfig(loss="focal_bce", focal_alpha=0.5, focal_gamma=1.0))
    assert isinstance(loss, FocalBCELoss) and (loss.focal.alpha, loss.focal.gamma) == (0.5, 1.0)
    assert isinstance(loss_from_config(TrainConfig(loss="bce")), BCELoss)
