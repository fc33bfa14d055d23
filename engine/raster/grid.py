"""A raster's pixel grid: size, geotransform and CRS, and its ground sample distance."""

from __future__ import annotations

import math
from dataclasses import dataclass

from osgeo import gdal, osr

gdal.UseExceptions()
osr.UseExceptions()

Geotransform = tuple[float, float, float, float, float, float]
# What GDAL reports for a raster without georeferencing.
IDENTITY_GEOTRANSFORM: Geotransform = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# Metres per degree of latitude and of longitude at the equator (WGS 84), for the GSD of
# geographic rasters (a ground sample distance needs no more precision than this).
_METRES_PER_DEGREE_LAT = 110_574.0
_METRES_PER_DEGREE_LON_EQUATOR = 111_320.0


@dataclass(frozen=True)
class Grid:
    """Where a raster's pixels lie: ``geotransform`` is None and ``crs_wkt`` empty when the
    raster has no georeferencing."""

    width: int
    height: int
    geotransform: Geotransform | None
    crs_wkt: str

    @classmethod
    def of(cls, dataset: gdal.Dataset) -> Grid:
        geotransform = dataset.GetGeoTransform(can_return_null=True)
        return cls(
            dataset.RasterXSize,
            dataset.RasterYSize,
            None if geotransform is None else tuple(geotransform),
            dataset.GetProjection() or "",
        )

    @property
    def transform(self) -> Geotransform:
        return self.geotransform or IDENTITY_GEOTRANSFORM

    @property
    def is_georeferenced(self) -> bool:
        return self.geotransform is not None

    @property
    def is_rotated(self) -> bool:
        return self.transform[2] != 0.0 or self.transform[4] != 0.0

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(min x, min y, max x, max y) of a north-up grid."""
        x0, dx, _, y0, _, dy = self.transform
        xs = (x0, x0 + dx * self.width)
        ys = (y0, y0 + dy * self.height)
        return min(xs), min(ys), max(xs), max(ys)

    def spatial_reference(self) -> osr.SpatialReference | None:
        if not self.crs_wkt:
            return None
        srs = osr.SpatialReference()
        srs.ImportFromWkt(self.crs_wkt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        return srs

    def same_grid(self, other: Grid) -> bool:
        """Same size and geotransform (to 1e-6 of a pixel) and an equivalent CRS."""
        if (self.width, self.height) != (other.width, other.height):
            return False
        if self.geotransform is None or other.geotransform is None:
            return self.geotransform is None and other.geotransform is None
        pixel = max(abs(self.transform[1]), abs(self.transform[5]))
        pairs = zip(self.transform, other.transform, strict=True)
        if any(abs(a - b) > 1e-6 * pixel for a, b in pairs):
            return False
        mine, theirs = self.spatial_reference(), other.spatial_reference()
        if mine is None or theirs is None:
            return mine is None and theirs is None
        return bool(mine.IsSame(theirs))

    def resampled(self, factor: float) -> Grid:
        """The same extent with pixels ``factor`` times larger (north-up grids only)."""
        width = max(1, round(self.width / factor))
        height = max(1, round(self.height / factor))
        x0, dx, _, y0, _, dy = self.transform
        geotransform = (x0, dx * self.width / width, 0.0, y0, 0.0, dy * self.height / height)
        return Grid(width, height, geotransform, self.crs_wkt)


def ground_sample_distance(grid: Grid) -> float | None:
    """The grid's pixel size in metres (geometric mean of x and y), or None without a CRS."""
    srs = grid.spatial_reference()
    if srs is None or grid.geotransform is None:
        return None
    _, a, b, y0, d, e = grid.geotransform
    if srs.IsGeographic():
        # Degrees (or another angular unit) to metres at the grid's centre latitude.
        to_degrees = math.degrees(srs.GetAngularUnits())
        centre_lat = (y0 + 0.5 * (d * grid.width + e * grid.height)) * to_degrees
        x_metres = math.hypot(a, d) * to_degrees * _METRES_PER_DEGREE_LON_EQUATOR
        x_metres *= math.cos(math.radians(centre_lat))
        y_metres = math.hypot(b, e) * to_degrees * _METRES_PER_DEGREE_LAT
        return math.sqrt(x_metres * y_metres)
    return math.sqrt(abs(a * e - b * d)) * srs.GetLinearUnits()
