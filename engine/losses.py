"""Training losses, registered by name in :data:`LOSSES`.

``unetmamba``: UNetMamba's loss, soft cross-entropy + Dice on the main logits, plus 0.4 x
soft cross-entropy on the local supervision (LSM) logits. ``enhanced``: Enhanced
UNetMamba's, which adds focal, Tversky, background-suppression and boundary terms.

Pixels labelled ``ignore_index`` (no-data, boundaries) take no part in any term.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from landcover.engine.errors import ConfigError


def soft_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    smoothing: float = 0.05,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Cross-entropy with label smoothing, averaged over the pixels not ignored.

    Per pixel: ``(1 - smoothing) * -log p[target] + smoothing * mean_c(-log p[c])``.
    logits ``(B, C, H, W)`` (any trailing dims), target ``(B, H, W)`` integer class ids.
    Returns 0 (with a gradient path) when every pixel is ignored. (The reference code
    divides by all pixels, ignored ones included; this divides by the valid ones, as
    ``torch.nn.functional.cross_entropy`` does.)
    """
    ignore = -100 if ignore_index is None else ignore_index
    total = F.cross_entropy(
        logits, target, ignore_index=ignore, label_smoothing=smoothing, reduction="sum"
    )
    valid = (target != ignore).sum()
    return total / valid.clamp(min=1)


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 0.05,
    ignore_index: int | None = 255,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Multi-class soft Dice loss on softmax probabilities (as pytorch-toolbelt, which the
    reference uses).

    Per class c over the whole batch: ``1 - (2 * sum(p_c * t_c) + smooth) / (sum(p_c + t_c)
    + smooth)``, with ignored pixels removed from both p and t; classes with no pixel in the
    target contribute 0; the loss is the mean over all classes.
    """
    probs, one_hot = _masked_probs_and_one_hot(logits, target, ignore_index)
    intersection = (probs * one_hot).sum(dim=(0, 2))
    cardinality = (probs + one_hot).sum(dim=(0, 2))
    score = (2.0 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)
    present = one_hot.sum(dim=(0, 2)) > 0
    return ((1.0 - score) * present).mean()


def _valid_and_safe(
    target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of the pixels not ignored, target with ignored pixels set to class 0)."""
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool), target
    valid = target != ignore_index
    return valid, target.masked_fill(~valid, 0)


def _masked_probs_and_one_hot(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and one-hot target, both ``(B, C, pixels)``, zero at ignored
    pixels (for the per-class overlap losses)."""
    valid, target = _valid_and_safe(target.flatten(1), ignore_index)
    valid = valid.unsqueeze(1)
    probs = logits.log_softmax(dim=1).exp().flatten(2) * valid
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 2, 1) * valid
    return probs, one_hot.to(probs.dtype)


# A model's output: logits, or in training mode ``(logits, aux)`` with ``aux`` the aux logits
# or a dict of named train-only outputs (``"lsm"``: aux logits, ``"background"``: logit).
ModelOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor | Mapping[str, torch.Tensor]]


def split_output(
    output: ModelOutput,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(logits, aux logits or None, background logit or None) of a model's output."""
    if not isinstance(output, tuple | list):
        return output, None, None
    logits, aux = output
    if isinstance(aux, Mapping):
        return logits, aux.get("lsm"), aux.get("background")
    return logits, aux, None


class UNetMambaLoss(nn.Module):
    """``soft_ce + dice`` on the main logits, ``+ 0.4 * soft_ce`` on the auxiliary logits.

    Call with ``(logits, target)`` or ``((logits, aux), target)``, ``aux`` the aux logits
    or a dict holding them under ``"lsm"`` (see :func:`split_output`); returns a scalar.
    """

    def __init__(
        self,
        ignore_index: int | None = 255,
        smoothing: float = 0.05,
        dice_smooth: float = 0.05,
        aux_weight: float = 0.4,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smoothing = smoothing
        self.dice_smooth = dice_smooth
        self.aux_weight = aux_weight

    def forward(self, output: ModelOutput, target: torch.Tensor) -> torch.Tensor:
        logits, aux_logits, _ = split_output(output)
        loss = soft_cross_entropy(logits, target, self.smoothing, self.ignore_index) + dice_loss(
            logits, target, self.dice_smooth, self.ignore_index
        )
        if aux_logits is not None:
            loss = loss + self.aux_weight * soft_cross_entropy(
                aux_logits, target, self.smoothing, self.ignore_index
            )
        return loss


# --- Enhanced UNetMamba's loss terms ---------------------------------------------------------


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float = 0.25,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al., ICCV 2017), averaged over the pixels not ignored.

    Per pixel: ``alpha * (1 - p_t)^gamma * -log p_t``, ``p_t`` the softmax probability of
    the target class. ``alpha`` is one weight for every class (the binary form's
    positive/negative balance has no multi-class counterpart), so it only scales the term.
    Returns 0 (with a gradient path) when every pixel is ignored.
    """
    valid, safe = _valid_and_safe(target, ignore_index)
    log_p = logits.log_softmax(dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    per_pixel = alpha * (1.0 - log_p.exp()).pow(gamma) * -log_p
    return torch.where(valid, per_pixel, 0.0).sum() / valid.sum().clamp(min=1)


def tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.7,
    beta: float = 0.3,
    smooth: float = 0.05,
    ignore_index: int | None = 255,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Multi-class Tversky loss (Salehi et al., 2017) on softmax probabilities.

    Per class c over the whole batch, with ignored pixels removed: ``TP = sum(p_c t_c)``,
    ``FP = sum(p_c (1 - t_c))``, ``FN = sum((1 - p_c) t_c)``;
    ``1 - (TP + smooth) / (TP + alpha FP + beta FN + smooth)``. ``alpha`` weighs false
    positives, ``beta`` false negatives (alpha = beta = 0.5 is Dice). As :func:`dice_loss`,
    classes with no pixel in the target contribute 0 and the mean is over all classes.
    """
    probs, one_hot = _masked_probs_and_one_hot(logits, target, ignore_index)
    true_pos = (probs * one_hot).sum(dim=(0, 2))
    false_pos = probs.sum(dim=(0, 2)) - true_pos
    false_neg = one_hot.sum(dim=(0, 2)) - true_pos
    denominator = true_pos + alpha * false_pos + beta * false_neg + smooth
    score = (true_pos + smooth) / denominator.clamp_min(eps)
    present = one_hot.sum(dim=(0, 2)) > 0
    return ((1.0 - score) * present).mean()


def background_logit_from_classes(logits: torch.Tensor, background_index: int) -> torch.Tensor:
    """The logit ``(B, 1, H, W)`` of the softmax probability of class ``background_index``:
    ``l_bg - logsumexp_{c != bg} l_c``, so that ``sigmoid`` of it is ``softmax(l)[bg]``."""
    num_classes = logits.shape[1]
    if not 0 <= background_index < num_classes:
        raise ConfigError(
            f"background_index {background_index} is not a class of a {num_classes}-class model"
        )
    others = [c for c in range(num_classes) if c != background_index]
    background = logits[:, background_index: background_index + 1]
    return background - logits[:, others].logsumexp(dim=1, keepdim=True)


def background_suppression_loss(
    background_logit: torch.Tensor,
    target: torch.Tensor,
    background_index: int,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Binary cross-entropy of "is this pixel background?", averaged over the pixels not
    ignored (our definition; the source names the term only).

    With ``q = sigmoid(z)`` for the background logit ``z`` ``(B, 1, H, W)`` or ``(B, H, W)``
    and ``t = [target == background_index]``: ``-(t log q + (1 - t) log(1 - q))``. It pushes
    the background probability down on foreground pixels and up on background ones, which
    Enhanced UNetMamba's weighting turns into damped features on background. ``z`` is the
    model's background head, or :func:`background_logit_from_classes` for other models.
    """
    valid, _ = _valid_and_safe(target, ignore_index)
    is_background = (target == background_index).to(background_logit.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(
        background_logit.reshape(target.shape), is_background, reduction="none"
    )
    return torch.where(valid, per_pixel, 0.0).sum() / valid.sum().clamp(min=1)


def class_boundaries(
    target: torch.Tensor, num_classes: int, radius: int = 1, ignore_index: int | None = 255
) -> torch.Tensor:
    """Boolean ``(B, H, W)``: the pixels not ignored that have a pixel of another class (not
    ignored) within ``radius`` (a ``(2 radius + 1)^2`` window, diagonals included)."""
    valid, safe = _valid_and_safe(target, ignore_index)
    one_hot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2) * valid.unsqueeze(1)
    nearby = F.max_pool2d(one_hot.float(), 2 * radius + 1, stride=1, padding=radius)
    return valid & (nearby.sum(dim=1) >= 2)


def boundary_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    radius: int = 1,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Cross-entropy averaged over the target's class boundaries (our definition; the
    source names the term only): the pixels of :func:`class_boundaries` within ``radius``
    of another class. Returns 0 (with a gradient path) when there is no boundary."""
    on_boundary = class_boundaries(target, logits.shape[1], radius, ignore_index)
    _, safe = _valid_and_safe(target, ignore_index)
    per_pixel = F.cross_entropy(logits, safe, reduction="none")
    return torch.where(on_boundary, per_pixel, 0.0).sum() / on_boundary.sum().clamp(min=1)


class EnhancedLoss(nn.Module):
    """Enhanced UNetMamba's loss: ``dice + ce + 0.5 focal + 0.3 tversky + 0.2 background
    suppression + 0.1 boundary`` on the main logits, ``+ 0.4 * ce`` on the LSM logits.

    ``ce`` is the label-smoothed cross-entropy and ``dice`` the Dice loss of
    :class:`UNetMambaLoss`. Every weight is an option; a weight of 0 skips its term. The
    background-suppression term uses the model's background logit when its output carries
    one (``aux["background"]``, Enhanced UNetMamba), otherwise the softmax probability of
    class ``background_index``. Takes the same outputs as :class:`UNetMambaLoss`.
    """

    def __init__(
        self,
        ignore_index: int | None = 255,
        smoothing: float = 0.05,
        dice_smooth: float = 0.05,
        aux_weight: float = 0.4,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        focal_weight: float = 0.5,
        focal_gamma: float = 2.0,
        focal_alpha: float = 0.25,
        tversky_weight: float = 0.3,
        tversky_alpha: float = 0.7,
        tversky_beta: float = 0.3,
        tversky_smooth: float = 0.05,
        background_weight: float = 0.2,
        background_index: int = 0,
        boundary_weight: float = 0.1,
        boundary_radius: int = 1,
    ) -> None:
        super().__init__()
        weights = {
            "aux_weight": aux_weight, "dice_weight": dice_weight, "ce_weight": ce_weight,
            "focal_weight": focal_weight, "tversky_weight": tversky_weight,
            "background_weight": background_weight, "boundary_weight": boundary_weight,
        }
        negative = [f"{name}={value}" for name, value in weights.items() if value < 0]
        if negative:
            raise ConfigError(f"loss weights must be >= 0 (0 disables a term), got {negative[0]}")
        if boundary_radius < 1:
            raise ConfigError(f"boundary_radius must be at least 1, got {boundary_radius}")
        self.ignore_index = ignore_index
        self.smoothing = smoothing
        self.dice_smooth = dice_smooth
        self.aux_weight = aux_weight
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.focal_weight = focal_weight
        self.focal_gamma = focal_gamma
        self.focal_alpha = focal_alpha
        self.tversky_weight = tversky_weight
        self.tversky_alpha = tversky_alpha
        self.tversky_beta = tversky_beta
        self.tversky_smooth = tversky_smooth
        self.background_weight = background_weight
        self.background_index = background_index
        self.boundary_weight = boundary_weight
        self.boundary_radius = boundary_radius

    def forward(self, output: ModelOutput, target: torch.Tensor) -> torch.Tensor:
        logits, aux_logits, background_logit = split_output(output)
        ignore = self.ignore_index
        terms = []
        if self.dice_weight:
            terms.append(self.dice_weight * dice_loss(logits, target, self.dice_smooth, ignore))
        if self.ce_weight:
            ce = soft_cross_entropy(logits, target, self.smoothing, ignore)
            terms.append(self.ce_weight * ce)
        if self.focal_weight:
            focal = focal_loss(logits, target, self.focal_gamma, self.focal_alpha, ignore)
            terms.append(self.focal_weight * focal)
        if self.tversky_weight:
            tversky = tversky_loss(
                logits, target, self.tversky_alpha, self.tversky_beta, self.tversky_smooth, ignore
            )
            terms.append(self.tversky_weight * tversky)
        if self.background_weight:
            if background_logit is None:
                background_logit = background_logit_from_classes(logits, self.background_index)
            suppression = background_suppression_loss(
                background_logit, target, self.background_index, ignore
            )
            terms.append(self.background_weight * suppression)
        if self.boundary_weight:
            boundary = boundary_loss(logits, target, self.boundary_radius, ignore)
            terms.append(self.boundary_weight * boundary)
        if aux_logits is not None and self.aux_weight:
            aux = soft_cross_entropy(aux_logits, target, self.smoothing, ignore)
            terms.append(self.aux_weight * aux)
        # all weights 0: a zero that still depends on the logits
        return sum(terms, logits.sum() * 0.0)


# Training configs pick their loss by name: ``loss: {name: unetmamba, aux_weight: 0.4}``.
LOSSES: dict[str, type[nn.Module]] = {"unetmamba": UNetMambaLoss, "enhanced": EnhancedLoss}


def build_loss(name: str, **options: object) -> nn.Module:
    """The registered loss ``name`` built with ``options``; a bad name or option is one
    :class:`ConfigError` line."""
    loss_class = LOSSES.get(name)
    if loss_class is None:
        raise ConfigError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    try:
        return loss_class(**options)
    except TypeError as error:
        raise ConfigError(f"loss {name!r}: {error}") from None
