"""Blending overlapping tiles into one raster, streamed in bounded memory.

Each tile's class probabilities are weighted by a smooth window (flat in the middle,
falling as sin^2 across the overlap to a small floor at the border) times its valid-pixel
mask, summed, and divided by the summed weights. Across an overlap of ``overlap`` pixels
the windows of two neighbours add up to one, so the result moves from one tile to the
other without a step; the floor keeps pixels at the raster's edge, which only one tile
covers near its border, well defined.

Tiles arrive in row-major order. After a tile, the columns left of the next tile's start
are final for its tile row: their rows above the next tile row are handed on at once, and
the rows the next tile row will overlap are kept in ``carry`` (``overlap`` rows of the full
width). So the blender holds one tile-sized strip plus an overlap-high band of rows,
whatever the raster's height, instead of a full tile-row band.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np

from landcover.engine.inference.tiler import TileGrid

# Weight at a tile's very border: small, so neighbours dominate there, but not zero, so a
# pixel that only one tile's border covers (at the raster's edge) still gets a value.
WINDOW_FLOOR = 1e-3

# (raster row, raster column, summed weighted probabilities (classes, h, w), summed
# weights (h, w)); pixels with zero weight are nodata.
Emit = Callable[[int, int, np.ndarray, np.ndarray], None]


def blend_window(length: int, ramp: int) -> np.ndarray:
    """1 in the middle, rising as sin^2 over ``ramp`` pixels at both ends, at least
    ``WINDOW_FLOOR``; float32 of ``length``."""
    centres = np.arange(length) + 0.5
    if ramp <= 0:
        return np.ones(length, np.float32)
    rise = np.clip(np.minimum(centres, length - centres) / ramp, 0.0, 1.0)
    return np.maximum(np.sin(rise * np.pi / 2) ** 2, WINDOW_FLOOR).astype(np.float32)


class StreamingBlender:
    """Blends tiles of a :class:`TileGrid`, given in its order, and emits final pixels.

    ``emit`` gets each finished piece (rows above the next tile row, columns left of the
    next tile); ``rows_complete(row)`` is called when every pixel above ``row`` is emitted.
    """

    def __init__(
        self,
        tiles: TileGrid,
        num_classes: int,
        emit: Emit,
        rows_complete: Callable[[int], None],
    ) -> None:
        self.tiles = tiles
        self.emit = emit
        self.rows_complete = rows_complete
        height, width = tiles.tile_height, tiles.tile_width
        self.window = np.outer(
            blend_window(height, min(tiles.overlap, height // 2)),
            blend_window(width, min(tiles.overlap, width // 2)),
        )
        carry_rows = max(
            [min(y + height, tiles.height) - max(next_y, 0) for y, next_y in pairwise(tiles.ys)]
            or [0]
        )
        self.carry = np.zeros((num_classes, carry_rows, tiles.width), np.float32)
        self.carry_weight = np.zeros((carry_rows, tiles.width), np.float32)
        self.strip = np.zeros((num_classes, height, width), np.float32)
        self.strip_weight = np.zeros((height, width), np.float32)
        self._carry_in = 0  # rows of carry that the current tile row starts with
        self._next = 0  # index of the next expected tile

    @property
    def nbytes(self) -> int:
        """Memory held for blending (independent of the raster's height)."""
        return sum(a.nbytes for a in (self.carry, self.carry_weight, self.strip,
                                      self.strip_weight, self.window))

    def add(self, probabilities: np.ndarray | None, valid: np.ndarray | None) -> None:
        """Add the next tile's probabilities (classes, h, w) and valid mask (h, w); None for
        a tile without valid pixels (nothing to blend, but its columns move on)."""
        tiles = self.tiles
        row, col = divmod(self._next, len(tiles.xs))
        self._next += 1
        x, y = tiles.xs[col], tiles.ys[row]
        if probabilities is not None:
            weight = self.window * valid
            self.strip += probabilities * weight
            self.strip_weight += weight
        last_col = col + 1 == len(tiles.xs)
        done = tiles.tile_width if last_col else tiles.xs[col + 1] - x
        self._finish_columns(row, x, y, done)
        if last_col:
            self.strip[:] = 0.0
            self.strip_weight[:] = 0.0
            self.rows_complete(self._final_rows_end(row))
        else:
            # Shift the columns the next tile overlaps to the strip's start.
            kept = tiles.tile_width - done
            self.strip[:, :, :kept] = self.strip[:, :, done:].copy()
            self.strip_weight[:, :kept] = self.strip_weight[:, done:].copy()
            self.strip[:, :, kept:] = 0.0
            self.strip_weight[:, kept:] = 0.0

    def _final_rows_end(self, row: int) -> int:
        """Rows above this are final once tile row ``row`` is done."""
        ys = self.tiles.ys
        return max(min(ys[row + 1], self.tiles.height), 0) if row + 1 < len(ys) \
            else self.tiles.height

    def _finish_columns(self, row: int, x: int, y: int, done: int) -> None:
        """Hand on strip columns ``0 .. done`` (raster columns ``x .. x + done``)."""
        tiles = self.tiles
        col0, col1 = max(x, 0), min(x + done, tiles.width)
        if col1 <= col0:
            return
        top, bottom = max(y, 0), min(y + tiles.tile_height, tiles.height)
        block = self.strip[:, top - y: bottom - y, col0 - x: col1 - x]
        weight = self.strip_weight[top - y: bottom - y, col0 - x: col1 - x]
        carry_in = self._carry_in
        if carry_in:
            block[:, :carry_in] += self.carry[:, :carry_in, col0:col1]
            weight[:carry_in] += self.carry_weight[:carry_in, col0:col1]
        final_end = self._final_rows_end(row)
        if final_end > top:
            self.emit(top, col0, block[:, : final_end - top], weight[: final_end - top])
        # carry row 0 is raster row final_end, where the next tile row's inside part starts
        carry_out = bottom - final_end
        if carry_out > 0:
            self.carry[:, :carry_out, col0:col1] = block[:, final_end - top:]
            self.carry_weight[:carry_out, col0:col1] = weight[final_end - top:]
        if col1 == tiles.width:
            self._carry_in = max(carry_out, 0)
