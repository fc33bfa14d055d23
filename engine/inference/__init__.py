"""Tiled inference: tiler, blending window, predictor (batches, devices, TTA), polygons,
and :func:`segment`, which ties them to the raster readers and writers."""
