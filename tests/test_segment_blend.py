"""The tiler and the streaming blender, against a plain whole-array blend."""

from __future__ import annotations

import numpy as np
import pytest

from landcover.engine.errors import ConfigError
from landcover.engine.inference.blend import WINDOW_FLOOR, StreamingBlender, blend_window
from landcover.engine.inference.tiler import TileGrid, axis_starts


@pytest.mark.parametrize("length", [1, 64, 100, 128, 129, 300, 1000, 16384])
@pytest.mark.parametrize(("tile", "overlap"), [(128, 32), (128, 0), (64, 16), (512, 64), (96, 20)])
def test_tiles_cover_the_raster_on_the_model_grid(length, tile, overlap):
    grid = TileGrid.plan(length, 7, tile, overlap)
    starts = np.array(grid.xs)
    stride = tile - grid.overlap
    assert starts[0] == 0 and (starts % 32 == 0).all()  # one phase of the model's grid
    assert grid.overlap >= min(overlap, grid.tile_width)  # at least the asked overlap
    assert (np.diff(starts) == stride).all()
    assert starts[-1] + grid.tile_width >= length  # covered
    assert len(starts) == 1 or starts[-2] + grid.tile_width < length  # no tile too many


def test_axis_starts_with_an_offset_reach_past_both_edges():
    assert axis_starts(384, 128, 128, offset=64) == [-64, 64, 192, 320]
    assert axis_starts(384, 128, 96, offset=64) == [-64, 32, 128, 224, 320]


def test_small_rasters_get_one_tile_rounded_up_to_the_multiple():
    grid = TileGrid.plan(50, 70, 128, 32)
    assert (grid.tile_width, grid.tile_height) == (64, 96)
    assert grid.xs == (0,) and grid.ys == (0,) and len(grid) == 1


@pytest.mark.parametrize(("tile", "overlap"), [(100, 10), (128, 65), (128, -1), (0, 0)])
def test_bad_tile_or_overlap_is_a_config_error(tile, overlap):
    with pytest.raises(ConfigError):
        TileGrid.plan(500, 500, tile, overlap)


def test_blend_window_is_a_partition_of_unity_across_the_overlap():
    tile, overlap = 128, 32
    window = blend_window(tile, overlap).astype(np.float64)
    stride = tile - overlap
    # Two neighbours: in the overlap their weights add up to one (no bump, no dip).
    summed = window[stride:] + window[:overlap]
    np.testing.assert_allclose(summed, 1.0, atol=2 * WINDOW_FLOOR)
    assert window.min() >= WINDOW_FLOOR and window[overlap:-overlap].min() == 1.0
    assert np.all(np.diff(window[: overlap + 1]) > 0)  # smooth rise, no step
    assert blend_window(64, 0).min() == 1.0  # no overlap: no blending


def _blend_all(grid: TileGrid, tiles: list[tuple[np.ndarray, np.ndarray] | None], classes: int):
    """The whole-raster reference: sum of window x mask x probabilities over all tiles."""
    pad = grid.tile_width + grid.tile_height
    weighted = np.zeros((classes, grid.height + 2 * pad, grid.width + 2 * pad))
    weights = np.zeros((grid.height + 2 * pad, grid.width + 2 * pad))
    window = np.outer(blend_window(grid.tile_height, min(grid.overlap, grid.tile_height // 2)),
                      blend_window(grid.tile_width, min(grid.overlap, grid.tile_width // 2)))
    for tile, data in zip(grid, tiles, strict=True):
        if data is None:
            continue
        probabilities, valid = data
        rows = slice(tile.y + pad, tile.y + pad + grid.tile_height)
        cols = slice(tile.x + pad, tile.x + pad + grid.tile_width)
        weighted[:, rows, cols] += probabilities * window * valid
        weights[rows, cols] += window * valid
    inside = (slice(pad, pad + grid.height), slice(pad, pad + grid.width))
    return weighted[(slice(None), *inside)], weights[inside]


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap", "offset"),
    [
        (300, 200, 64, 16, (0, 0)),
        (300, 200, 64, 0, (0, 0)),
        (257, 190, 64, 32, (0, 0)),
        (300, 200, 64, 16, (32, 32)),
        (130, 300, 64, 16, (10, 50)),
        (40, 50, 128, 32, (0, 0)),
        (64, 64, 64, 16, (0, 0)),
    ],
)
def test_streaming_blend_equals_the_whole_array_blend(width, height, tile, overlap, offset):
    rng = np.random.default_rng(width * height + tile)
    classes = 3
    grid = TileGrid.plan(width, height, tile, overlap, offset=offset)
    tiles = []
    for index in range(len(grid)):
        if index % 5 == 3:
            tiles.append(None)  # an all-nodata tile
            continue
        probabilities = rng.dirichlet(np.ones(classes), (grid.tile_height, grid.tile_width))
        valid = rng.random((grid.tile_height, grid.tile_width)) > 0.1
        tiles.append((probabilities.transpose(2, 0, 1).astype(np.float32), valid))
    expected_weighted, expected_weights = _blend_all(grid, tiles, classes)

    weighted = np.full((classes, height, width), np.nan)
    weights = np.full((height, width), np.nan)
    completed = []

    def emit(row, col, block, block_weights):
        rows, cols = block_weights.shape
        assert np.isnan(weights[row: row + rows, col: col + cols]).all(), "emitted twice"
        weighted[:, row: row + rows, col: col + cols] = block
        weights[row: row + rows, col: col + cols] = block_weights

    def rows_complete(row):
        assert not np.isnan(weights[:row]).any(), "rows reported complete before emitted"
        completed.append(row)

    blender = StreamingBlender(grid, classes, emit, rows_complete)
    for data in tiles:
        blender.add(*(data or (None, None)))
    assert completed[-1] == height and completed == sorted(completed)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weighted, expected_weighted, rtol=1e-5, atol=1e-6)


def test_blender_memory_is_one_tile_strip_plus_an_overlap_band_of_rows():
    classes, width, tile, overlap = 6, 4096, 256, 32

    def held(height):
        grid = TileGrid.plan(width, height, tile, overlap)
        blender = StreamingBlender(grid, classes, lambda *a: None, lambda row: None)
        return blender.nbytes, blender.carry.shape[1]

    short, tall = held(2_000), held(200_000)
    assert short == tall  # does not grow with the raster's height
    nbytes, carry_rows = tall
    assert carry_rows == overlap  # an overlap of rows, never a full tile row
    band = (classes + 1) * 4 * (carry_rows * width + tile * tile) + 4 * tile * tile
    assert nbytes <= band
    assert nbytes < (classes + 1) * 4 * tile * width / 4  # far below a full tile row
