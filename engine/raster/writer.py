"""Output rasters: GeoTIFFs on the input's grid, written a block-row at a time under
temporary names that become the real names only once every output is complete."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal

from landcover.engine.errors import ConfigError, OutputPathError
from landcover.engine.modelfile import ClassInfo
from landcover.engine.raster.grid import Grid

gdal.UseExceptions()

# The class and confidence rasters' nodata value (never a class id: at most 255 classes).
NODATA = 255
GTIFF_OPTIONS = (
    "TILED=YES",
    "BLOCKXSIZE=256",
    "BLOCKYSIZE=256",
    "COMPRESS=DEFLATE",
    "ZLEVEL=4",
    "BIGTIFF=IF_SAFER",
)
# Files GDAL or SQLite may leave beside an output.
_SIDECAR_SUFFIXES = (".aux.xml", "-journal", "-wal", "-shm")


def check_writable(path: Path) -> None:
    """Raise :class:`OutputPathError` unless a file can be written at ``path``."""
    if path.is_dir():
        raise OutputPathError(f"output {path} is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise OutputPathError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {path}: no permission to write in {folder}")


class PendingOutputs:
    """Output files written under hidden temporary names in their final folders.

    ``commit`` renames them all (side-car ``.aux.xml`` files included) once everything is
    written; ``discard`` removes them. Until ``commit``, existing files at the final paths
    are untouched, so a failed or cancelled run leaves nothing that looks finished.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []
        self._token = f"{os.getpid()}-{secrets.token_hex(3)}"

    def reserve(self, final: str | os.PathLike[str]) -> Path:
        """A temporary path for the output ``final``, after checking it can be written."""
        final = Path(final)
        check_writable(final)
        if any(final.resolve() == done.resolve() for _, done in self._pending):
            raise ConfigError(f"{final} is given for two outputs; give each its own path")
        temporary = final.parent / f".{final.stem}.{self._token}.partial{final.suffix}"
        self._pending.append((temporary, final))
        return temporary

    def commit(self) -> None:
        for temporary, final in self._pending:
            os.replace(temporary, final)
            sidecar, stale = Path(f"{temporary}.aux.xml"), Path(f"{final}.aux.xml")
            if sidecar.exists():
                os.replace(sidecar, stale)
            else:
                stale.unlink(missing_ok=True)  # an older output's metadata must not stick
        self._pending.clear()

    def discard(self) -> None:
        for temporary, _ in self._pending:
            for path in (temporary, *(Path(f"{temporary}{s}") for s in _SIDECAR_SUFFIXES)):
                path.unlink(missing_ok=True)
        self._pending.clear()


def create_geotiff(
    path: Path, grid: Grid, bands: int, *, data_type: int = gdal.GDT_Byte
) -> gdal.Dataset:
    """An empty tiled, compressed GeoTIFF on ``grid`` (its CRS and geotransform)."""
    driver = gdal.GetDriverByName("GTiff")
    try:
        dataset = driver.Create(
            os.fspath(path), grid.width, grid.height, bands, data_type, list(GTIFF_OPTIONS)
        )
    except RuntimeError as error:
        raise OutputPathError(f"cannot write {path}: {error}") from None
    if grid.geotransform is not None:
        dataset.SetGeoTransform(grid.geotransform)
    if grid.crs_wkt:
        dataset.SetProjection(grid.crs_wkt)
    return dataset


def create_class_raster(path: Path, grid: Grid, classes: Sequence[ClassInfo]) -> gdal.Dataset:
    """The class raster: one uint8 band with the classes' colours and names, nodata 255."""
    dataset = create_geotiff(path, grid, 1)
    band = dataset.GetRasterBand(1)
    band.SetNoDataValue(NODATA)
    band.SetDescription("land cover class")
    colors = gdal.ColorTable()
    for value in range(256):
        colors.SetColorEntry(value, (0, 0, 0, 0))
    for info in classes:
        colors.SetColorEntry(info.id, (*info.color, 255))
    band.SetRasterColorTable(colors)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    names = [""] * NODATA
    for info in classes:
        names[info.id] = info.name
    band.SetCategoryNames(names[: max(c.id for c in classes) + 1])
    return dataset


def create_confidence_raster(path: Path, grid: Grid) -> gdal.Dataset:
    """The confidence raster: uint8 percent (0..100) of the winning class, nodata 255."""
    dataset = create_geotiff(path, grid, 1)
    band = dataset.GetRasterBand(1)
    band.SetNoDataValue(NODATA)
    band.SetDescription("confidence of the winning class (percent)")
    band.SetMetadataItem("UNIT", "percent")
    return dataset


class BlockRowWriter:
    """Collects finished pieces of rows and writes whole block-rows to GDAL datasets.

    Pieces may arrive in any order within the rows not yet written; ``rows_complete(row)``
    says every row above ``row`` is final. Each block of a compressed tiled GeoTIFF is so
    written exactly once, and the buffer never holds more than a block-row plus one band
    of pieces (``max_piece_rows``), whatever the raster's height. Planes go to the bands
    of ``datasets`` in order (the writer keeps the datasets open: GDAL bands do not).
    """

    def __init__(
        self, datasets: Sequence[gdal.Dataset], max_piece_rows: int, dtype: type = np.uint8,
        fill: int = NODATA,
    ) -> None:
        self.datasets = list(datasets)
        first = self.datasets[0]
        self.height = first.RasterYSize
        self.block_rows = first.GetRasterBand(1).GetBlockSize()[1]
        self.fill = fill
        bands = sum(d.RasterCount for d in self.datasets)
        capacity = self.block_rows + max_piece_rows
        self.buffer = np.full((bands, capacity, first.RasterXSize), fill, dtype)
        self.row0 = 0  # raster row of buffer row 0
        self.seconds = 0.0  # time spent in GDAL writes

    def put(self, row: int, col: int, planes: np.ndarray) -> None:
        """Store ``planes`` (bands, h, w) at raster ``row``, ``col``."""
        top = row - self.row0
        if top < 0 or top + planes.shape[1] > self.buffer.shape[1]:
            raise ValueError(f"rows {row}..{row + planes.shape[1]} are outside the buffer")
        self.buffer[:, top: top + planes.shape[1], col: col + planes.shape[2]] = planes

    def rows_complete(self, row: int) -> None:
        """Rows above ``row`` are final: write every whole block-row among them."""
        ready = row - self.row0
        if row < self.height:
            ready -= ready % self.block_rows
        if ready <= 0:
            return
        start = time.perf_counter()
        plane = 0
        for dataset in self.datasets:
            for number in range(1, dataset.RasterCount + 1):
                dataset.GetRasterBand(number).WriteArray(self.buffer[plane, :ready], 0, self.row0)
                plane += 1
        self.seconds += time.perf_counter() - start
        remaining = self.buffer.shape[1] - ready
        self.buffer[:, :remaining] = self.buffer[:, ready:].copy()
        self.buffer[:, remaining:] = self.fill
        self.row0 += ready

    def flush(self) -> None:
        """Write what GDAL still caches (compression happens here), timed with the rest."""
        start = time.perf_counter()
        for dataset in self.datasets:
            dataset.FlushCache()
        self.seconds += time.perf_counter() - start
