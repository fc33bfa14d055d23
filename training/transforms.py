"""Training augmentation: random scale, crop, flips, 90-degree turns and mosaic.

Every function takes a ``numpy.random.Generator``: the data module seeds one per sample
from (run seed, epoch, position), so the same run sees the same crops whatever the number
of workers, and a resumed run continues with exactly the samples it would have drawn.
Images here are already normalised (padding with 0 is padding with the band mean).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Pair = tuple[torch.Tensor, torch.Tensor]  # image (C, H, W) float32, mask (H, W) int64


def draw_scale(scale: Sequence[float] | None, rng: np.random.Generator) -> float:
    """A factor from a list of choices, or uniform in ``[low, high]`` given as a dict
    ``{"range": [low, high]}``-like pair; ``None`` or ``[1.0]``: no scaling."""
    if not scale:
        return 1.0
    if isinstance(scale, dict):
        low, high = scale["range"]
        return float(rng.uniform(low, high))
    return float(scale[rng.integers(len(scale))])


def resize(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> Pair:
    """To ``size`` (height, width): bilinear for the image, nearest for the mask."""
    if tuple(mask.shape) == tuple(size):
        return image, mask
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, mask


def random_crop(
    image: torch.Tensor,
    mask: torch.Tensor,
    size: tuple[int, int],
    rng: np.random.Generator,
    ignore_index: int,
    image_fill: float = 0.0,
) -> Pair:
    """A ``size`` window at a random position; smaller inputs are padded (image with
    ``image_fill``, mask with the ignore index) at a random offset."""
    height, width = size
    pad_h, pad_w = max(0, height - mask.shape[0]), max(0, width - mask.shape[1])
    if pad_h or pad_w:
        top, left = int(rng.integers(pad_h + 1)), int(rng.integers(pad_w + 1))
        padding = (left, pad_w - left, top, pad_h - top)
        image = F.pad(image, padding, value=image_fill)
        mask = F.pad(mask, padding, value=ignore_index)
    y = int(rng.integers(mask.shape[0] - height + 1))
    x = int(rng.integers(mask.shape[1] - width + 1))
    return image[:, y: y + height, x: x + width], mask[y: y + height, x: x + width]


def random_dihedral(
    image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator, flip: bool, rotate: bool
) -> Pair:
    """Random left-right and up-down flips and a random number of quarter turns."""
    if flip and rng.random() < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    if flip and rng.random() < 0.5:
        image, mask = image.flip(-2), mask.flip(-2)
    if rotate:
        turns = int(rng.integers(4))
        if turns:
            image, mask = image.rot90(turns, (-2, -1)), mask.rot90(turns, (-2, -1))
    return image, mask


def mosaic(
    pieces: Callable[[int, tuple[int, int]], Pair],
    size: int,
    rng: np.random.Generator,
) -> Pair:
    """Four crops around a random centre stitched into one ``size`` square; ``pieces(k,
    (h, w))`` returns the k-th source cropped to ``(h, w)`` (the quadrant's size)."""
    low, high = size // 4, 3 * size // 4
    cy, cx = int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))
    quadrants = ((cy, cx), (cy, size - cx), (size - cy, cx), (size - cy, size - cx))
    parts = [pieces(k, shape) for k, shape in enumerate(quadrants)]
    image = torch.cat(
        [torch.cat([parts[0][0], parts[1][0]], -1), torch.cat([parts[2][0], parts[3][0]], -1)],
        -2,
    )
    mask = torch.cat(
        [torch.cat([parts[0][1], parts[1][1]], -1), torch.cat([parts[2][1], parts[3][1]], -1)],
        -2,
    )
    return image, mask
