"""Areas of pixels and polygons on a raster's grid, in the units its CRS implies.

- Projected CRS: planar area in the CRS's linear unit squared (``m2`` for metres).
- Geographic CRS: square metres on the CRS's own ellipsoid. Raster pixels and the polygons
  made from them have edges that are straight lines in longitude/latitude (meridians and
  parallels, not geodesics), so the area is integrated exactly for such edges: by Green's
  theorem the area of a ring is the line integral of A(lat) d(lon), where A(lat) is the
  ellipsoid's area between the equator and ``lat`` per radian of longitude (closed form,
  via the authalic latitude). For meridians and parallels this is exact; slanted edges
  (after simplification) are integrated by 4-point Gauss-Legendre, far below a pixel's
  worth of error. No pyproj is needed; the sum of polygon areas equals the sum of their
  pixel areas.
- No CRS: planar area in the geotransform's units (``map units2``), which are pixels
  (``px``) when the raster has no georeferencing at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from osgeo import gdal

from landcover.engine.raster.grid import Grid

gdal.UseExceptions()

_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(4)
# Gauss-Legendre on [0, 1] instead of [-1, 1].
_GAUSS_NODES = (_GAUSS_NODES + 1.0) / 2.0
_GAUSS_WEIGHTS = _GAUSS_WEIGHTS / 2.0
_SQUARE_UNIT_NAMES = {"metre": "m2", "meter": "m2", "foot": "ft2", "US survey foot": "ftUS2"}


@dataclass(frozen=True)
class AreaMeasure:
    """Measures areas on one grid; ``unit`` names the result's unit (``m2``, ``px`` ...)."""

    grid: Grid
    unit: str
    # Square metres per area unit; None when the unit is not a length squared (no CRS).
    square_metres_per_unit: float | None
    # Semi-major and semi-minor axes (metres) and the angular unit in radians, for a
    # geographic CRS; None for planar areas.
    ellipsoid: tuple[float, float] | None = None
    radians_per_unit: float = 1.0

    @classmethod
    def for_grid(cls, grid: Grid) -> AreaMeasure:
        srs = grid.spatial_reference()
        if srs is None:
            return cls(grid, "map units2" if grid.is_georeferenced else "px", None)
        if srs.IsGeographic():
            return cls(
                grid, "m2", 1.0, (srs.GetSemiMajor(), srs.GetSemiMinor()),
                srs.GetAngularUnits(),
            )
        name = srs.GetLinearUnitsName()
        return cls(grid, _SQUARE_UNIT_NAMES.get(name, f"{name}2"), srs.GetLinearUnits() ** 2)

    def pixel_areas(self, row0: int, rows: int) -> np.ndarray:
        """Areas of the pixels in rows ``row0 .. row0 + rows``: shape (rows, 1) where every
        pixel of a row has the same area, else (rows, width)."""
        x0, a, b, y0, d, e = self.grid.transform
        if self.ellipsoid is None:
            return np.full((rows, 1), abs(a * e - b * d))
        columns = self.grid.width if self.grid.is_rotated else 1
        col, row = np.meshgrid(np.arange(columns), np.arange(row0, row0 + rows))
        # Corners of each pixel, in ring order.
        corner_cols = np.stack([col, col + 1, col + 1, col, col], axis=-1)
        corner_rows = np.stack([row, row, row + 1, row + 1, row], axis=-1)
        lon = x0 + a * corner_cols + b * corner_rows
        lat = y0 + d * corner_cols + e * corner_rows
        return np.abs(self._ring_integrals(lon, lat).sum(axis=-1))

    def mean_pixel_area(self) -> float:
        return float(self.pixel_areas(self.grid.height // 2, 1).mean())

    def polygon_areas(self, geometries: np.ndarray) -> np.ndarray:
        """Areas of (multi)polygons whose coordinates are in the grid's CRS."""
        if self.ellipsoid is None:
            return shapely.area(geometries)
        parts, part_owner = shapely.get_parts(geometries, return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
        # Consecutive coordinates of the same ring are its edges (rings are closed).
        same_ring = coord_ring[1:] == coord_ring[:-1]
        edge_integrals = self._ring_integrals(
            np.stack([coords[:-1, 0], coords[1:, 0]], axis=-1)[same_ring],
            np.stack([coords[:-1, 1], coords[1:, 1]], axis=-1)[same_ring],
        )[:, 0]
        ring_areas = np.abs(
            np.bincount(coord_ring[:-1][same_ring], edge_integrals, minlength=len(rings))
        )
        # get_rings lists each polygon's exterior first, then its holes.
        is_exterior = np.r_[True, ring_part[1:] != ring_part[:-1]]
        part_areas = np.bincount(
            ring_part, np.where(is_exterior, ring_areas, -ring_areas), minlength=len(parts)
        )
        return np.bincount(part_owner, part_areas, minlength=len(geometries))

    def _ring_integrals(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """The integral of A(lat) d(lon) along each edge of paths given by (..., n) arrays of
        vertices; returns (..., n - 1) values."""
        lon = lon * self.radians_per_unit
        lat = lat * self.radians_per_unit
        lat0, lat1 = lat[..., :-1, None], lat[..., 1:, None]
        samples = self._area_from_equator(lat0 + (lat1 - lat0) * _GAUSS_NODES)
        return (lon[..., 1:] - lon[..., :-1]) * (samples @ _GAUSS_WEIGHTS)

    def _area_from_equator(self, lat: np.ndarray) -> np.ndarray:
        """The ellipsoid's area between the equator and ``lat`` per radian of longitude."""
        semi_major, semi_minor = self.ellipsoid
        sin_lat = np.sin(lat)
        e2 = 1.0 - (semi_minor / semi_major) ** 2
        if e2 < 1e-12:  # a sphere
            return semi_major**2 * sin_lat
        e = np.sqrt(e2)
        return 0.5 * semi_minor**2 * (
            sin_lat / (1.0 - e2 * sin_lat**2) + np.arctanh(e * sin_lat) / e
        )


def tabulate_class_areas(
    band: gdal.Band, measure: AreaMeasure, num_classes: int, nodata: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts and areas per class of a class raster band, read a block-row at a time."""
    _, block_rows = band.GetBlockSize()
    rows_per_read = max(block_rows, 256)
    pixels = np.zeros(256, np.int64)
    areas = np.zeros(256)
    for row0 in range(0, band.YSize, rows_per_read):
        rows = min(rows_per_read, band.YSize - row0)
        classes = band.ReadAsArray(0, row0, band.XSize, rows)
        pixels += np.bincount(classes.ravel(), minlength=256)
        pixel_areas = np.broadcast_to(measure.pixel_areas(row0, rows), classes.shape)
        areas += np.bincount(classes.ravel(), pixel_areas.ravel(), minlength=256)
    pixels[nodata] = 0
    areas[nodata] = 0.0
    return pixels[:num_classes], areas[:num_classes]
