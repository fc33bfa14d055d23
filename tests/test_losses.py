"""UNetMamba's loss terms on hand-computed values."""

import math

import pytest
import torch

from landcover.engine.losses import UNetMambaLoss, dice_loss, soft_cross_entropy

LN2, LN3 = math.log(2.0), math.log(3.0)


def _pixels(*rows: list[float]) -> torch.Tensor:
    """Logits of a 1 x len(rows) image, one row of class logits per pixel -> (1, C, 1, P)."""
    return torch.tensor(rows, dtype=torch.float64).t().reshape(1, len(rows[0]), 1, len(rows))


def test_soft_cross_entropy_by_hand():
    # pixel 1: uniform over 3 classes -> -log p = ln 3 for every class
    # pixel 2: p = (1/4, 1/2, 1/4), target 1 -> nll ln 2, mean_c(-log p) = (2+1+2) ln2 / 3
    logits = _pixels([0.0, 0.0, 0.0], [0.0, LN2, 0.0])
    target = torch.tensor([[[2, 1]]])
    eps = 0.05
    pixel1 = LN3
    pixel2 = (1 - eps) * LN2 + eps * 5 * LN2 / 3
    expected = (pixel1 + pixel2) / 2
    assert soft_cross_entropy(logits, target, smoothing=eps).item() == pytest.approx(expected)
    assert soft_cross_entropy(logits, target, smoothing=0.0).item() == pytest.approx(
        (LN3 + LN2) / 2
    )


def test_soft_cross_entropy_ignores_pixels():
    logits = _pixels([0.0, 0.0, 0.0], [0.0, LN2, 0.0], [50.0, -50.0, 3.0])
    target = torch.tensor([[[2, 1, 255]]])
    kept = soft_cross_entropy(logits[..., :2], target[..., :2])
    assert soft_cross_entropy(logits, target).item() == pytest.approx(kept.item())
    # another ignore value
    target = torch.tensor([[[2, 1, 7]]])
    assert soft_cross_entropy(logits, target, ignore_index=7).item() == pytest.approx(kept.item())


def test_soft_cross_entropy_all_ignored_is_zero_with_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = soft_cross_entropy(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_dice_loss_by_hand():
    # pixel A: p = (1/4, 3/4), target 1; pixel B: p = (3/4, 1/4), target 0
    # each class: intersection 3/4, cardinality 2 -> 1 - (1.5 + s) / (2 + s)
    logits = _pixels([0.0, LN3], [LN3, 0.0])
    target = torch.tensor([[[1, 0]]])
    s = 0.05
    expected = 1 - (1.5 + s) / (2 + s)
    assert dice_loss(logits, target, smooth=s).item() == pytest.approx(expected)
    # an ignored pixel changes nothing
    logits = _pixels([0.0, LN3], [LN3, 0.0], [9.0, -9.0])
    target = torch.tensor([[[1, 0, 255]]])
    assert dice_loss(logits, target, smooth=s).item() == pytest.approx(expected)


def test_dice_loss_absent_class_counts_as_zero():
    # class 2 has no target pixel: it adds 0 but still counts in the mean over classes
    logits = _pixels([0.0, LN3, -1e9], [LN3, 0.0, -1e9])
    target = torch.tensor([[[1, 0]]])
    s = 0.05
    per_class = 1 - (1.5 + s) / (2 + s)
    assert dice_loss(logits, target, smooth=s).item() == pytest.approx(2 * per_class / 3)


def test_perfect_prediction_has_near_zero_dice():
    target = torch.randint(0, 4, (2, 8, 8))
    logits = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).double() * 100
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(0.0, abs=1e-9)


def test_unetmamba_loss_combines_terms():
    torch.manual_seed(0)
    logits, aux = torch.randn(2, 5, 8, 8), torch.randn(2, 5, 8, 8)
    target = torch.randint(0, 5, (2, 8, 8))
    target[0, :2] = 255
    criterion = UNetMambaLoss(ignore_index=255)
    main = soft_cross_entropy(logits, target) + dice_loss(logits, target)
    assert criterion(logits, target).item() == pytest.approx(main.item())
    total = main + 0.4 * soft_cross_entropy(aux, target)
    assert criterion((logits, aux), target).item() == pytest.approx(total.item())


def test_unetmamba_loss_trains_a_model_output():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    aux = torch.randn(1, 3, 4, 4, requires_grad=True)
    UNetMambaLoss()((logits, aux), torch.randint(0, 3, (1, 4, 4))).backward()
    assert logits.grad.abs().sum() > 0 and aux.grad.abs().sum() > 0
