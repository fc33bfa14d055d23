"""Class probabilities for one in-memory image: the segmentation path without rasters.

Training validation and ``landcover evaluate`` predict whole images (dataset samples) of
any size. They go through the same tiling (:class:`TileGrid`, strides on the model's
grid) and the same blending (:class:`StreamingBlender`) as ``segment``, so a score
measured here is the score of the maps users get.
"""

from __future__ import annotations

import numpy as np

from landcover.engine.errors import ConfigError
from landcover.engine.inference.blend import StreamingBlender
from landcover.engine.inference.predictor import Predictor
from landcover.engine.inference.tiler import TileGrid


def predict_array(
    predictor: Predictor, image: np.ndarray, *, tile: int, overlap: int
) -> np.ndarray:
    """Class probabilities (classes, H, W) float32 for a normalised image (bands, H, W).

    Overlapping ``tile`` x ``tile`` windows (fewer pixels along a side shorter than a
    tile, rounded up to the model's input multiple) are blended with segment's window.
    Where a window reaches past the image, the image is continued by reflection (segment
    reflects each window instead; the two agree wherever the window's inside part is at
    least as long as its outside part, as with the usual overlaps). ``overlap`` is at most
    half a tile; the probabilities of each pixel sum to one.
    """
    if image.ndim != 3 or min(image.shape) < 1:
        raise ConfigError(f"predict_array needs one image (bands, height, width), got "
                          f"shape {image.shape}")
    _, height, width = image.shape
    tiles = TileGrid.plan(width, height, tile, overlap, multiple=predictor.input_multiple)
    padded = np.pad(
        np.asarray(image, np.float32),
        ((0, 0), (0, tiles.ys[-1] + tiles.tile_height - height),
         (0, tiles.xs[-1] + tiles.tile_width - width)),
        mode="reflect",
    )
    result: np.ndarray | None = None

    def emit(row: int, col: int, weighted: np.ndarray, weight: np.ndarray) -> None:
        rows, cols = weight.shape
        result[:, row: row + rows, col: col + cols] = weighted / weight

    valid = np.ones((tiles.tile_height, tiles.tile_width), bool)
    blender: StreamingBlender | None = None
    batch: list[np.ndarray] = []
    positions = list(tiles)
    for index, position in enumerate(positions):
        batch.append(padded[:, position.y: position.y + tiles.tile_height,
                            position.x: position.x + tiles.tile_width])
        if len(batch) < predictor.batch_size and index + 1 < len(positions):
            continue
        probabilities = predictor.predict(np.stack(batch))
        batch.clear()
        if blender is None:  # the class count is known from the first batch
            result = np.empty((probabilities.shape[1], height, width), np.float32)
            blender = StreamingBlender(tiles, probabilities.shape[1], emit, lambda row: None)
        for probability in probabilities:
            blender.add(probability, valid)
    return result
