"""UNetMamba's training loss: soft cross-entropy + Dice on the main logits, plus 0.4 x soft
cross-entropy on the local supervision (LSM) logits.

Pixels labelled ``ignore_index`` (no-data, boundaries) take no part in either term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    num_classes = logits.shape[1]
    probs = logits.log_softmax(dim=1).exp().flatten(2)  # (B, C, P)
    target = target.flatten(1)  # (B, P)
    if ignore_index is not None:
        valid = target != ignore_index
        probs = probs * valid.unsqueeze(1)
        target = target.masked_fill(~valid, 0)
        one_hot = F.one_hot(target, num_classes).permute(0, 2, 1) * valid.unsqueeze(1)
    else:
        one_hot = F.one_hot(target, num_classes).permute(0, 2, 1)
    one_hot = one_hot.to(probs.dtype)
    intersection = (probs * one_hot).sum(dim=(0, 2))
    cardinality = (probs + one_hot).sum(dim=(0, 2))
    score = (2.0 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)
    present = one_hot.sum(dim=(0, 2)) > 0
    return ((1.0 - score) * present).mean()


class UNetMambaLoss(nn.Module):
    """``soft_ce + dice`` on the main logits, ``+ 0.4 * soft_ce`` on the auxiliary logits.

    Call with ``(logits, target)`` or ``((logits, aux_logits), target)``; returns a scalar.
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

    def forward(
        self, output: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        logits, aux_logits = output if isinstance(output, tuple | list) else (output, None)
        loss = soft_cross_entropy(logits, target, self.smoothing, self.ignore_index) + dice_loss(
            logits, target, self.dice_smooth, self.ignore_index
        )
        if aux_logits is not None:
            loss = loss + self.aux_weight * soft_cross_entropy(
                aux_logits, target, self.smoothing, self.ignore_index
            )
        return loss
