"""Overlapping tiles over a raster, in row-major order."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from landcover.engine.errors import ConfigError


def axis_starts(length: int, tile: int, stride: int, offset: int = 0) -> list[int]:
    """Where tiles start along one axis: every ``stride`` pixels from ``-offset`` until the
    axis is covered; the last tile may reach past the end (the reader fills it by
    reflection)."""
    starts = []
    start = -offset
    while True:
        if start + tile > 0:
            starts.append(start)
        if start + tile >= length:
            return starts
        start += stride


@dataclass(frozen=True)
class Tile:
    index: int
    row: int  # index of the tile row
    col: int  # index within the tile row
    x: int
    y: int


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile_height`` x ``tile_width`` starting at ``ys`` x ``xs``, overlapping
    by ``overlap`` pixels."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    overlap: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]

    @classmethod
    def plan(
        cls,
        width: int,
        height: int,
        tile: int,
        overlap: int,
        *,
        multiple: int = 32,
        offset: tuple[int, int] = (0, 0),
    ) -> TileGrid:
        """Tiles of ``tile`` pixels overlapping by at least ``overlap``.

        The stride is rounded down to a multiple of ``multiple`` (the model's total
        downsampling), so every tile samples the image on the same phase of the model's
        internal grid: strided networks are only shift-equivariant by whole strides, and
        tiles on different phases disagree everywhere, not just near their borders. So
        the overlap is rounded up (``tile - stride``), and the last tile may reach past
        the raster's end. Along a side shorter than a tile, one tile of that side rounded
        up to ``multiple``. ``offset`` (x, y) shifts the grid left and up, for studies of
        tiling effects.
        """
        if tile <= 0 or tile % multiple:
            raise ConfigError(f"tile size {tile} must be a positive multiple of {multiple}")
        if not 0 <= overlap <= tile // 2:
            raise ConfigError(
                f"overlap {overlap} must be between 0 and half the tile ({tile // 2})"
            )
        stride = max(multiple, (tile - overlap) // multiple * multiple)
        tile_width = min(tile, math.ceil(width / multiple) * multiple)
        tile_height = min(tile, math.ceil(height / multiple) * multiple)
        return cls(
            width,
            height,
            tile_width,
            tile_height,
            tile - stride,
            tuple(axis_starts(width, tile_width, stride, offset[0])),
            tuple(axis_starts(height, tile_height, stride, offset[1])),
        )

    def __len__(self) -> int:
        return len(self.xs) * len(self.ys)

    def __iter__(self) -> Iterator[Tile]:
        index = 0
        for row, y in enumerate(self.ys):
            for col, x in enumerate(self.xs):
                yield Tile(index, row, col, x, y)
                index += 1
