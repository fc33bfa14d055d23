"""Enhanced UNetMamba's loss terms on hand-computed values, and the loss registry."""

import math

import pytest
import torch

from landcover.engine.errors import ConfigError
from landcover.engine.losses import (
    LOSSES,
    EnhancedLoss,
    UNetMambaLoss,
    background_logit_from_classes,
    background_suppression_loss,
    boundary_loss,
    build_loss,
    class_boundaries,
    dice_loss,
    focal_loss,
    soft_cross_entropy,
    tversky_loss,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def _pixels(*rows: list[float]) -> torch.Tensor:
    """Logits of a 1 x len(rows) image, one row of class logits per pixel -> (1, C, 1, P)."""
    return torch.tensor(rows, dtype=torch.float64).t().reshape(1, len(rows[0]), 1, len(rows))


def _labels(*ids: int) -> torch.Tensor:
    return torch.tensor([[list(ids)]])


# ------------------------------------------------------------------------ focal


def test_focal_loss_by_hand():
    # pixel 1: p = (1/2, 1/2), target 0: p_t = 1/2 -> 0.25 * (1/2)^2 * ln 2 = ln 2 / 16
    # pixel 2: p = (1/4, 3/4), target 1: p_t = 3/4 -> 0.25 * (1/4)^2 * ln(4/3) = ln(4/3) / 64
    # pixel 3: ignored
    logits = _pixels([0.0, 0.0], [0.0, LN3], [40.0, -40.0])
    target = _labels(0, 1, 255)
    expected = (LN2 / 16 + math.log(4 / 3) / 64) / 2
    assert focal_loss(logits, target).item() == pytest.approx(expected)
    # gamma 0, alpha 1: plain cross-entropy, (ln 2 + ln(4/3)) / 2
    plain = focal_loss(logits, target, gamma=0.0, alpha=1.0).item()
    assert plain == pytest.approx((LN2 + math.log(4 / 3)) / 2)


def test_focal_loss_all_ignored_is_zero_with_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = focal_loss(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


# ------------------------------------------------------------------------ Tversky


def test_tversky_loss_by_hand():
    # A: p = (1/4, 3/4), target 1;  B: p = (1/4, 3/4), target 0;  C: p = (3/4, 1/4), target 0
    # class 0: TP = 1/4 + 3/4 = 1, FP = 1/4 (A), FN = 3/4 + 1/4 = 1
    # class 1: TP = 3/4, FP = 3/4 + 1/4 = 1, FN = 1/4
    # alpha 0.7 (FP), beta 0.3 (FN), smooth 0:
    #   TI_0 = 1 / (1 + 0.175 + 0.3) = 1 / 1.475;  TI_1 = 0.75 / (0.75 + 0.7 + 0.075) = 0.75 / 1.525
    logits = _pixels([0.0, LN3], [0.0, LN3], [LN3, 0.0], [5.0, 1.0])
    target = _labels(1, 0, 0, 255)
    expected = ((1 - 1 / 1.475) + (1 - 0.75 / 1.525)) / 2
    assert tversky_loss(logits, target, smooth=0.0).item() == pytest.approx(expected)
    # swapped weights: TI_0 = 1 / (1 + 0.075 + 0.7), TI_1 = 0.75 / (0.75 + 0.3 + 0.175)
    swapped = ((1 - 1 / 1.775) + (1 - 0.75 / 1.225)) / 2
    value = tversky_loss(logits, target, alpha=0.3, beta=0.7, smooth=0.0).item()
    assert value == pytest.approx(swapped)
    # smoothing s adds to numerator and denominator
    s = 0.05
    smoothed = ((1 - (1 + s) / (1.475 + s)) + (1 - (0.75 + s) / (1.525 + s))) / 2
    assert tversky_loss(logits, target, smooth=s).item() == pytest.approx(smoothed)


def test_tversky_with_equal_weights_is_dice():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 6, 6))
    target[0, 0] = 255
    tversky = tversky_loss(logits, target, alpha=0.5, beta=0.5, smooth=0.0)
    assert tversky.item() == pytest.approx(dice_loss(logits, target, smooth=0.0).item())


# ------------------------------------------------------------------------ background


def test_background_suppression_by_hand():
    # background class 2; q = sigmoid(z)
    # pixel 1: z = 0, q = 1/2, background      -> -ln(1/2) = ln 2
    # pixel 2: z = ln 3, q = 3/4, foreground   -> -ln(1/4) = 2 ln 2
    # pixel 3: z = ln 3, q = 3/4, background   -> -ln(3/4) = 2 ln 2 - ln 3
    # pixel 4: ignored
    z = torch.tensor([[[[0.0, LN3, LN3, 9.0]]]], dtype=torch.float64)
    target = _labels(2, 0, 2, 255)
    expected = (5 * LN2 - LN3) / 3
    loss = background_suppression_loss(z, target, background_index=2)
    assert loss.item() == pytest.approx(expected)
    # (B, H, W) logits work too
    assert background_suppression_loss(z[:, 0], target, 2).item() == pytest.approx(expected)


def test_background_logit_from_classes():
    # logits (0, ln 2, 0): p = (1/4, 2/4, 1/4); background 0 -> z = 0 - ln(2 + 1) = -ln 3
    logits = _pixels([0.0, LN2, 0.0])
    z = background_logit_from_classes(logits, 0)
    assert z.shape == (1, 1, 1, 1)
    assert z.item() == pytest.approx(-LN3)
    assert torch.sigmoid(z).item() == pytest.approx(0.25)
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    z = background_logit_from_classes(logits, 3)
    torch.testing.assert_close(torch.sigmoid(z), logits.softmax(dim=1)[:, 3:4])
    with pytest.raises(ConfigError, match="background_index 5"):
        background_logit_from_classes(logits, 5)


# ------------------------------------------------------------------------ boundary


def test_class_boundaries_by_hand():
    # a class-1 pixel at (1, 1): every pixel within one step (diagonals too) is on a boundary
    target = torch.tensor([[[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]])
    expected = torch.tensor([[[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0]]], dtype=torch.bool)
    assert torch.equal(class_boundaries(target, 2), expected)
    # an ignored pixel is no boundary itself
    target[0, 1, 2] = 255
    expected[0, 1, 2] = False
    assert torch.equal(class_boundaries(target, 2), expected)
    # nor does it make its neighbours boundaries
    assert not class_boundaries(torch.tensor([[[0, 255, 1]]]), 2).any()
    # radius 2: pixels within two steps of the class change
    row = torch.tensor([[[0, 0, 0, 1]]])
    assert class_boundaries(row, 2, radius=2).tolist() == [[[False, True, True, True]]]


def test_boundary_loss_by_hand():
    # target 0 0 1 1: the boundary is pixels 1 and 2
    # pixel 1: p = (1/2, 1/2), target 0 -> ln 2;  pixel 2: p = (1/4, 3/4), target 1 -> ln(4/3)
    logits = _pixels([5.0, -5.0], [0.0, 0.0], [0.0, LN3], [-5.0, 5.0])
    expected = (LN2 + math.log(4 / 3)) / 2
    assert boundary_loss(logits, _labels(0, 0, 1, 1)).item() == pytest.approx(expected)


def test_boundary_loss_without_boundary_is_zero_with_gradient():
    logits = _pixels([5.0, -5.0], [0.0, 0.0], [0.0, LN3], [-5.0, 5.0]).requires_grad_()
    loss = boundary_loss(logits, _labels(0, 0, 255, 1))  # the ignored pixel separates them
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


# ------------------------------------------------------------------------ EnhancedLoss


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 8, generator=generator, dtype=torch.float64)
    aux = torch.randn(2, 5, 8, 8, generator=generator, dtype=torch.float64)
    background = torch.randn(2, 1, 8, 8, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 5, (2, 8, 8), generator=generator)
    target[0, :2] = 255
    return logits, aux, background, target


def test_enhanced_loss_combines_terms(batch):
    logits, aux, background, target = batch
    main = (
        dice_loss(logits, target)
        + soft_cross_entropy(logits, target)
        + 0.5 * focal_loss(logits, target, gamma=2.0, alpha=0.25)
        + 0.3 * tversky_loss(logits, target, alpha=0.7, beta=0.3)
        + 0.1 * boundary_loss(logits, target)
    )
    lsm = 0.4 * soft_cross_entropy(aux, target)
    from_classes = background_logit_from_classes(logits, 0)
    criterion = EnhancedLoss()
    # a model's background head (dict aux) is used for the suppression term ...
    with_head = main + lsm + 0.2 * background_suppression_loss(background, target, 0)
    output = (logits, {"lsm": aux, "background": background})
    assert criterion(output, target).item() == pytest.approx(with_head.item())
    # ... otherwise the softmax background probability
    plain = main + lsm + 0.2 * background_suppression_loss(from_classes, target, 0)
    assert criterion((logits, aux), target).item() == pytest.approx(plain.item())
    assert criterion((logits, {"lsm": aux}), target).item() == pytest.approx(plain.item())
    assert criterion(logits, target).item() == pytest.approx((plain - lsm).item())


def test_zero_weights_disable_terms(batch):
    logits, aux, background, target = batch
    output = (logits, {"lsm": aux, "background": background})
    criterion = EnhancedLoss(
        focal_weight=0, tversky_weight=0, background_weight=0, boundary_weight=0
    )
    expected = UNetMambaLoss()((logits, aux), target)
    assert criterion(output, target).item() == pytest.approx(expected.item())
    only_boundary = EnhancedLoss(
        dice_weight=0, ce_weight=0, focal_weight=0, tversky_weight=0, background_weight=0,
        aux_weight=0, boundary_weight=2.0,
    )
    expected = 2.0 * boundary_loss(logits, target)
    assert only_boundary(output, target).item() == pytest.approx(expected.item())


def test_enhanced_loss_gradients_and_all_ignored():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    aux = torch.randn(1, 3, 4, 4, requires_grad=True)
    background = torch.randn(1, 1, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (1, 4, 4))
    EnhancedLoss()((logits, {"lsm": aux, "background": background}), target).backward()
    assert all(t.grad.abs().sum() > 0 for t in (logits, aux, background))
    for t in (logits, aux, background):
        t.grad = None
    output = (logits, {"lsm": aux, "background": background})
    loss = EnhancedLoss()(output, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.equal(t.grad, torch.zeros_like(t)) for t in (logits, aux, background))


def test_enhanced_loss_honours_another_ignore_index(batch):
    logits, aux, background, target = batch
    output = (logits, {"lsm": aux, "background": background})
    moved = target.masked_fill(target == 255, 7)
    expected = EnhancedLoss()(output, target).item()
    assert EnhancedLoss(ignore_index=7)(output, moved).item() == pytest.approx(expected)


def test_negative_weight_is_refused():
    with pytest.raises(ConfigError, match="focal_weight=-1"):
        EnhancedLoss(focal_weight=-1)


def test_unetmamba_loss_reads_the_lsm_entry_of_a_dict(batch):
    logits, aux, background, target = batch
    criterion = UNetMambaLoss()
    expected = criterion((logits, aux), target).item()
    output = (logits, {"lsm": aux, "background": background})
    assert criterion(output, target).item() == pytest.approx(expected)


# ------------------------------------------------------------------------ registry


def test_losses_registry_and_build_loss():
    assert LOSSES["enhanced"] is EnhancedLoss and LOSSES["unetmamba"] is UNetMambaLoss
    loss = build_loss("enhanced", focal_weight=0.0, background_index=6)
    assert isinstance(loss, EnhancedLoss) and loss.focal_weight == 0.0
    assert loss.background_index == 6
    with pytest.raises(ConfigError, match=r"known losses: enhanced, .*unetmamba"):
        build_loss("focal")
    with pytest.raises(ConfigError, match=r"'enhanced'.*focal_wieght"):
        build_loss("enhanced", focal_wieght=0.5)
