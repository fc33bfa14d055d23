"""The model's input: rasters opened and checked, aligned onto one grid, bands mapped,
nodata masked and values normalised, read one window at a time.

Several inputs (multi-modal models) are aligned onto the working grid on the fly through
GDAL warped VRTs: nothing resampled is ever written. The working grid is the first input's
grid, or a coarser/finer version of it when the input is resampled to the model's ground
sample distance.

Nodata: a pixel is nodata when every selected band of an input equals that band's nodata
value (``--nodata`` overrides the file's), when a mask or alpha band says so, when a float
band is NaN, or, for an aligned input, where it does not cover the grid. With several
inputs a pixel is valid only where all of them are. Nodata pixels are fed to the model as 0
(the band mean after normalisation), so a black collar does not read as dark ground.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from landcover.engine.errors import ConfigError, InputRasterError
from landcover.engine.raster.grid import Grid, ground_sample_distance

gdal.UseExceptions()

# Mask and alpha band values at or above this mean "valid" (GDAL masks use 0 and 255).
MASK_VALID_FROM = 128
_COMPLEX_TYPES = {gdal.GDT_CInt16, gdal.GDT_CInt32, gdal.GDT_CFloat32, gdal.GDT_CFloat64}


def open_raster(path: str | os.PathLike[str]) -> gdal.Dataset:
    """Open ``path`` read-only as a raster GDAL can segment, or raise a one-line error."""
    path = os.fspath(path)
    try:
        dataset = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
    except RuntimeError as error:
        if not os.path.exists(path) and not path.startswith("/vsi"):
            raise FileNotFoundError(f"input raster {path} does not exist; check the path") from None
        if os.path.isfile(path) and not os.access(path, os.R_OK):
            raise PermissionError(f"input raster {path} cannot be read (no permission)") from None
        detail = str(error).splitlines()[0] if str(error) else "unknown format"
        raise InputRasterError(
            f"{path} is not a raster GDAL can read ({detail}); pass a GeoTIFF or another "
            "GDAL raster"
        ) from None
    if dataset.RasterCount == 0:
        subdatasets = dataset.GetSubDatasets()
        if subdatasets:
            raise InputRasterError(
                f"{path} holds {len(subdatasets)} subdatasets, not bands; pass one of them, "
                f"e.g. {subdatasets[0][0]}"
            )
        raise InputRasterError(f"{path} has no raster bands; pass a raster, not a vector file")
    complex_bands = [
        gdal.GetDataTypeName(dataset.GetRasterBand(i).DataType)
        for i in range(1, dataset.RasterCount + 1)
        if dataset.GetRasterBand(i).DataType in _COMPLEX_TYPES
    ]
    if complex_bands:
        raise InputRasterError(
            f"{path} has complex-valued bands ({complex_bands[0]}, e.g. SAR in SLC form); "
            "convert them to amplitude or intensity (real numbers) first"
        )
    return dataset


def data_band_numbers(dataset: gdal.Dataset) -> list[int]:
    """Band numbers (1-based) that hold data: every band except an alpha band."""
    return [
        number
        for number in range(1, dataset.RasterCount + 1)
        if dataset.GetRasterBand(number).GetColorInterpretation() != gdal.GCI_AlphaBand
    ]


def _is_finer(dataset: gdal.Dataset, grid: Grid) -> bool:
    source_gsd = ground_sample_distance(Grid.of(dataset))
    target_gsd = ground_sample_distance(grid)
    return source_gsd is not None and target_gsd is not None and source_gsd < target_gsd


def warp_onto(dataset: gdal.Dataset, grid: Grid, nodata: float | None) -> gdal.Dataset:
    """A warped VRT of ``dataset`` on ``grid``: resampled on read, never written out.

    Its last band is an alpha band (0..255) that marks where the source has valid data:
    areas the source does not cover and source nodata (all bands equal to it) get 0.
    Downsampling averages, anything else interpolates bilinearly.
    """
    options = gdal.WarpOptions(
        format="VRT",
        outputBounds=grid.bounds,
        width=grid.width,
        height=grid.height,
        dstSRS=grid.crs_wkt,
        resampleAlg="average" if _is_finer(dataset, grid) else "bilinear",
        srcNodata=nodata,
        dstNodata="None",
        dstAlpha=True,
        warpOptions=["UNIFIED_SRC_NODATA=YES", "DST_ALPHA_MAX=255"],
    )
    return gdal.Warp("", dataset, options=options)


@dataclass
class _Layer:
    """One input on the working grid and the bands read from it."""

    path: str
    dataset: gdal.Dataset  # the input itself, or a warped VRT of it (which keeps it open)
    band_numbers: list[int]
    nodata: list[float | None]
    read_mask_band: bool  # the input's own per-dataset mask or alpha band applies
    # A warped VRT's alpha band (0..255 whatever the data type; GDAL's mask band view of
    # a non-byte alpha band rescales it, so it is read directly).
    alpha_band: int | None = None

    def read(self, x: int, y: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Selected bands as float32 (bands, h, w) and validity (h, w) of a window inside."""
        values = self.dataset.ReadAsArray(
            x, y, width, height, band_list=self.band_numbers, buf_type=gdal.GDT_Float32
        ).reshape(len(self.band_numbers), height, width)
        valid = ~np.isnan(values).any(axis=0)
        compared = [
            values[i] == np.float32(value) for i, value in enumerate(self.nodata)
            if value is not None
        ]
        if compared:
            valid &= ~np.logical_and.reduce(compared)
        if self.alpha_band is not None:
            alpha = self.dataset.GetRasterBand(self.alpha_band)
            valid &= alpha.ReadAsArray(x, y, width, height) >= MASK_VALID_FROM
        if self.read_mask_band:
            mask = self.dataset.GetRasterBand(self.band_numbers[0]).GetMaskBand()
            valid &= mask.ReadAsArray(x, y, width, height) >= MASK_VALID_FROM
        return values, valid


def _layer(path: str, dataset: gdal.Dataset, bands: list[int], nodata: float | None) -> _Layer:
    flags = dataset.GetRasterBand(bands[0]).GetMaskFlags()
    per_dataset_mask = bool(flags & gdal.GMF_PER_DATASET) and not flags & gdal.GMF_NODATA
    if nodata is None:
        values = [dataset.GetRasterBand(b).GetNoDataValue() for b in bands]
    else:
        values = [nodata] * len(bands)
    return _Layer(path, dataset, bands, values, per_dataset_mask)


class RasterSource:
    """The model's input bands on one grid: ``read`` gives normalised windows and validity."""

    def __init__(
        self,
        layers: list[_Layer],
        grid: Grid,
        channels: list[tuple[int, int]],
        mean: Sequence[float],
        std: Sequence[float],
        descriptions: list[str],
    ) -> None:
        self.layers = layers
        self.grid = grid
        # channel k of the model input = band channels[k][1] of the values read from layer
        # channels[k][0]
        self.channels = channels
        self.mean = np.asarray(mean, np.float32)[:, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None]
        self.descriptions = descriptions

    @property
    def num_bands(self) -> int:
        return len(self.channels)

    def read_valid(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Validity (h, w) of a window that lies inside the grid."""
        valid = np.ones((height, width), bool)
        for layer in self.layers:
            valid &= layer.read(x, y, width, height)[1]
        return valid

    def read(self, x: int, y: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """The normalised model input (bands, h, w) float32 and validity (h, w) of a window.

        Parts of the window outside the grid are reflections of the inside (so the model
        sees plausible context) and are invalid. Nodata pixels are 0.
        """
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, self.grid.width), min(y + height, self.grid.height)
        read = [layer.read(x0, y0, x1 - x0, y1 - y0) for layer in self.layers]
        valid = np.logical_and.reduce([layer_valid for _, layer_valid in read])
        data = np.stack([read[layer][0][band] for layer, band in self.channels])
        data -= self.mean
        data /= self.std
        data[:, ~valid] = 0.0
        padding = ((y0 - y, y + height - y1), (x0 - x, x + width - x1))
        if any(p for pair in padding for p in pair):
            data = np.pad(data, ((0, 0), *padding), mode="reflect")
            valid = np.pad(valid, padding, constant_values=False)
        return data, valid


def open_source(
    paths: Sequence[str | os.PathLike[str]],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    band_names: Sequence[str],
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    grid: Grid | None = None,
) -> RasterSource:
    """Open ``paths`` as one stack of bands for a model with ``band_names`` on ``grid``
    (default: the first input's grid).

    ``bands`` picks and orders input bands by 1-based number, counted across the inputs in
    order (the second input's first band follows the first input's last); without it the
    inputs must have exactly the model's band count.
    """
    paths = [os.fspath(p) for p in paths]
    datasets = [open_raster(p) for p in paths]
    grid = grid or Grid.of(datasets[0])
    available: list[tuple[int, int, str]] = []  # (input index, band number, description)
    for index, (path, dataset) in enumerate(zip(paths, datasets, strict=True)):
        for number in data_band_numbers(dataset):
            description = dataset.GetRasterBand(number).GetDescription()
            label = f"{os.path.basename(path)} band {number}"
            available.append((index, number, f"{label} ({description})" if description else label))
    chosen = _choose_bands(paths, available, bands, band_names)

    layers: list[_Layer] = []
    channels: list[tuple[int, int]] = []
    for index, (path, dataset) in enumerate(zip(paths, datasets, strict=True)):
        numbers = [number for i, number, _ in chosen if i == index]
        if not numbers:
            raise ConfigError(f"--bands selects no band of {path}; leave that input out")
        if Grid.of(dataset).same_grid(grid):
            layer = _layer(path, dataset, numbers, nodata)
        else:
            warped = warp_onto(_checked_for_alignment(path, dataset, paths[0], grid), grid, nodata)
            # The warped VRT holds the input's data bands in order, then its alpha band
            # (source nodata and masks are already in it).
            data_numbers = data_band_numbers(dataset)
            layer = _Layer(path, warped, [data_numbers.index(n) + 1 for n in numbers],
                           [None] * len(numbers), False, warped.RasterCount)
        layer_index = len(layers)
        layers.append(layer)
        for i, number, _ in chosen:
            if i == index:
                channels.append((layer_index, numbers.index(number)))
    return RasterSource(layers, grid, channels, mean, std, [d for _, _, d in chosen])


def _checked_for_alignment(path: str, dataset: gdal.Dataset, first: str, grid: Grid):
    own = Grid.of(dataset)
    if not own.is_georeferenced or not own.crs_wkt:
        raise InputRasterError(
            f"{path} has no georeferencing, so it cannot be aligned onto the grid of {first}; "
            "georeference it or give it the same size as the first input"
        )
    if not grid.is_georeferenced or not grid.crs_wkt:
        raise InputRasterError(
            f"{first} has no georeferencing, so {path} cannot be aligned onto it; "
            "georeference it first"
        )
    if grid.is_rotated:
        raise InputRasterError(
            f"{first} has a rotated grid, onto which inputs cannot be aligned; warp it "
            "north-up first (gdalwarp)"
        )
    return dataset


def _choose_bands(
    paths: list[str],
    available: list[tuple[int, int, str]],
    bands: Sequence[int] | None,
    band_names: Sequence[str],
) -> list[tuple[int, int, str]]:
    expected = len(band_names)
    inputs = "the input has" if len(paths) == 1 else f"the {len(paths)} inputs have"
    if bands is None:
        wanted = f"the model expects {expected} band{'s' if expected > 1 else ''} " \
                 f"({', '.join(band_names)}) but {inputs} {len(available)}"
        if len(available) < expected:
            raise InputRasterError(f"{wanted}; use a model made for these bands")
        if len(available) > expected:
            example = ",".join(str(i) for i in range(1, expected + 1))
            raise InputRasterError(
                f"{wanted}; pass --bands with {expected} band numbers in the model's order, "
                f"e.g. --bands {example}"
            )
        return available
    if len(bands) != expected:
        raise ConfigError(
            f"--bands lists {len(bands)} bands but the model expects {expected} "
            f"({', '.join(band_names)})"
        )
    wrong = [b for b in bands if not 1 <= b <= len(available)]
    if wrong:
        raise ConfigError(
            f"--bands {wrong[0]}: {inputs} bands 1..{len(available)} (counted across inputs)"
        )
    return [available[b - 1] for b in bands]
