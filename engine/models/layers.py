"""Helpers every model family shares: the input check and first-conv adaptation."""

from __future__ import annotations

import math

import torch


def check_input(x: torch.Tensor, in_channels: int, multiple: int, layout: str = "") -> None:
    """Refuse an input that is not ``(batch, in_channels, H, W)`` with H and W multiples of
    ``multiple``; ``layout`` (e.g. "optical 13, sar 2") is added to the message."""
    if x.dim() != 4 or x.shape[1] != in_channels:
        detail = f" ({layout})" if layout else ""
        raise ValueError(
            f"expected input of shape (batch, {in_channels}, height, width){detail}, "
            f"got {tuple(x.shape)}"
        )
    height, width = x.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(
            f"input height and width must be multiples of {multiple}, "
            f"got {height}x{width}; pad the input (the tiler does)"
        )


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB-pretrained first conv ``(out, 3, k, k)`` for ``in_channels`` bands: summed for
    one band, else the RGB filters repeated over the bands and rescaled by ``3 / bands``
    so the response to an input of the same statistics keeps its size."""
    rgb = weight.shape[1]
    if in_channels == rgb:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / rgb)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (rgb / in_channels)
