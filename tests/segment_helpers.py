"""Shared helpers for the segmentation tests: test rasters, small model packages, and a
tiny UNetMamba fitted for a few seconds so that its classes follow the image content."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from osgeo import gdal

from landcover.engine.benchmarks.segment import fit_quickly
from landcover.engine.modelfile import BandInfo, ClassInfo, ModelMeta, save_model_package
from landcover.engine.models import create_model

gdal.UseExceptions()

DATA = Path(__file__).parent / "data"
LANDSAT = DATA / "landsat8_corner.tif"  # uint16, 0 fill, no nodata value
LANDSAT_FILL = DATA / "landsat8_fill.tif"  # entirely 0 fill
RGB_BYTE = DATA / "rgb_byte_collar.tif"  # uint8, nodata=0, black collar
NAIP = DATA / "naip_4band.tif"  # uint8 R, G, B, NIR, nodata=0, 5 m
SN6_MS = DATA / "sn6_ms_1m.tif"  # float64, 4 bands, 1 m
SN6_PAN = DATA / "sn6_pan_05m.tif"  # uint16, 1 band, 0.5 m
SAR_COMPLEX = DATA / "sn6_sar_complex.tif"  # CFloat32
NO_GEOREF = DATA / "dubai_no_georef.png"  # RGB, no georeferencing

ARCH = "unetmamba_tiny"
COLORS = [(0, 0, 255), (255, 200, 0), (0, 128, 0), (200, 0, 0), (128, 128, 128), (0, 200, 200)]
# Per-band (mean, std) that put each test raster's values near unit scale.
STATS = {
    "uint8": (120.0, 40.0),
    "landsat": (7700.0, 400.0),
    "sn6_ms": (300.0, 150.0),
    "sn6_pan": (300.0, 150.0),
}


def make_package(
    path: Path,
    *,
    bands: Sequence[str] = ("red", "green", "blue"),
    stats: Sequence[tuple[float, float]] | tuple[float, float] = STATS["uint8"],
    num_classes: int = 4,
    tile: int = 128,
    overlap: int = 32,
    gsd_m: float | None = None,
    seed: int = 0,
) -> Path:
    """An untrained ``unetmamba_tiny`` package (deterministic weights for ``seed``)."""
    if isinstance(stats[0], int | float):
        stats = [stats] * len(bands)
    torch.manual_seed(seed)
    model = create_model(ARCH, num_classes=num_classes, in_channels=len(bands), aux_head=False)
    meta = ModelMeta.for_model(
        model,
        classes=[ClassInfo(i, f"class {i}", COLORS[i % len(COLORS)]) for i in range(num_classes)],
        bands=[BandInfo(name, mean, std) for name, (mean, std) in zip(bands, stats, strict=True)],
        gsd_m=gsd_m,
        tile_size=tile,
        tile_overlap=overlap,
    )
    save_model_package(path, model, meta)
    return path


def _scratch_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="landcover-test-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over (2 radius + 1)^2 windows (edges replicated)."""
    size = 2 * radius + 1
    sums = np.pad(np.pad(image, radius, mode="edge").cumsum(axis=0).cumsum(axis=1),
                  ((1, 0), (1, 0)))
    window = sums[size:, size:] - sums[:-size, size:] - sums[size:, :-size] \
        + sums[:-size, :-size]
    return window / size**2


@functools.cache
def fitted_package() -> Path:
    """A ``unetmamba_tiny`` fitted for 40 steps (a few seconds) on the NAIP sample to a
    content-driven target (quartiles of smoothed brightness).

    A randomly initialised network outputs class noise tied to each pixel's position in its
    final 4x4 upsampling, which no tiling changes; a fitted one has smooth, context-
    dependent classes whose errors near tile borders (padding, lost context) are what
    blending has to hide, so seams become measurable.
    """
    mean, std = STATS["uint8"]
    image = (gdal.Open(str(NAIP)).ReadAsArray()[:3].astype(np.float32) - mean) / std
    brightness = _box_blur(image.mean(axis=0), 4)
    target = np.digitize(brightness, np.quantile(brightness, [0.25, 0.5, 0.75]))
    torch.manual_seed(0)
    model = create_model(ARCH, num_classes=4, in_channels=3, aux_head=False)
    fit_quickly(model, image, target, steps=40)
    meta = ModelMeta.for_model(
        model,
        classes=[ClassInfo(i, f"class {i}", COLORS[i]) for i in range(4)],
        bands=[BandInfo(name, mean, std) for name in ("red", "green", "blue")],
        tile_size=128,
        tile_overlap=32,
    )
    path = _scratch_dir() / "fitted.lcm"
    save_model_package(path, model, meta)
    return path


def read_band(path: Path, band: int = 1) -> np.ndarray:
    dataset = gdal.Open(str(path))  # GDAL bands do not keep their dataset open
    return dataset.GetRasterBand(band).ReadAsArray()
