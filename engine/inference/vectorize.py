"""Class polygons from a class raster: GDAL's sieve filter and polygonize (C++), optional
coverage simplification (shared boundaries stay shared), areas, and a GeoPackage layer
that carries its QGIS style.

Both GDAL steps use 4-connectedness, so the pieces the sieve removes are exactly the
polygons polygonize would have made. Nodata (255) is masked out of both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import shapely
from osgeo import gdal, ogr, osr

from landcover.engine.errors import SegmentationCancelled
from landcover.engine.modelfile import ClassInfo
from landcover.engine.raster.areas import AreaMeasure
from landcover.engine.raster.grid import Grid

gdal.UseExceptions()
ogr.UseExceptions()

LAYER_NAME = "land_cover"
GEOMETRY_COLUMN = "geom"
STYLE_TABLE = "layer_styles"
# Features written between cancel checks and progress reports.
_WRITE_CHUNK = 20_000

Progress = Callable[[float], None]
IsCancelled = Callable[[], bool]


def _gdal_callback(progress: Progress, is_cancelled: IsCancelled):
    """A GDAL progress callback that reports and stops (returns 0) when cancelled."""

    def callback(complete: float, message: str, data: object) -> int:
        progress(complete)
        return 0 if is_cancelled() else 1

    return callback


def _run_gdal(step: Callable[[], object], is_cancelled: IsCancelled) -> None:
    try:
        step()
    except RuntimeError:
        if is_cancelled():
            raise SegmentationCancelled("segmentation cancelled") from None
        raise


def sieve(
    source: gdal.Band,
    target: gdal.Band,
    min_pixels: int,
    *,
    progress: Progress,
    is_cancelled: IsCancelled,
) -> None:
    """Merge 4-connected pieces smaller than ``min_pixels`` into their largest neighbour.

    GDAL's semantics: a piece with no neighbour of at least ``min_pixels`` (an island in
    nodata, or pure speckle) stays as it is.
    """
    _run_gdal(
        lambda: gdal.SieveFilter(
            source, source.GetMaskBand(), target, min_pixels, 4,
            callback=_gdal_callback(progress, is_cancelled),
        ),
        is_cancelled,
    )


def polygonize(
    class_band: gdal.Band,
    spatial_reference: osr.SpatialReference | None,
    *,
    progress: Progress,
    is_cancelled: IsCancelled,
) -> tuple[np.ndarray, np.ndarray]:
    """Polygons (shapely array) and their class ids of a class raster's valid pixels."""
    memory = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = memory.CreateLayer("polygons", spatial_reference, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
    _run_gdal(
        lambda: gdal.Polygonize(
            class_band, class_band.GetMaskBand(), layer, 0, [],
            callback=_gdal_callback(progress, is_cancelled),
        ),
        is_cancelled,
    )
    geometry_key = layer.GetGeometryColumn() or "wkb_geometry"
    wkbs, class_ids = [], []
    for batch in layer.GetArrowStreamAsNumPy(options=["USE_MASKED_ARRAYS=NO"]):
        # copies: the arrays may be views of buffers the stream frees with the next batch
        wkbs.append(batch[geometry_key].copy())
        class_ids.append(batch["class_id"].copy())
    if not wkbs:
        return np.empty(0, object), np.empty(0, np.int32)
    return shapely.from_wkb(np.concatenate(wkbs)), np.concatenate(class_ids)


def simplify_coverage(polygons: np.ndarray, grid: Grid, tolerance: float) -> np.ndarray:
    """Simplify polygonized pixels by ``tolerance`` (CRS units) as one coverage, so
    neighbours keep sharing their boundaries (no gaps, no overlaps).

    GEOS's coverage simplification needs shared edges to have the same vertices, which
    polygonize does not give (a long edge of one polygon has no vertex where its two
    neighbours on the other side meet). So the polygons go to pixel coordinates, rounded
    to exact integers, get a vertex at every pixel corner, are simplified there, and come
    back through the geotransform.
    """
    x0, a, b, y0, d, e = grid.transform
    to_map = np.array([[a, b], [d, e]])
    to_pixels = np.linalg.inv(to_map)
    origin = np.array([x0, y0])
    in_pixels = shapely.transform(polygons, lambda xy: np.rint((xy - origin) @ to_pixels.T))
    simplified = shapely.coverage_simplify(
        shapely.segmentize(in_pixels, 1.0), tolerance / math.sqrt(abs(a * e - b * d))
    )
    return shapely.transform(simplified, lambda ij: ij @ to_map.T + origin)


def write_geopackage(
    path: Path,
    polygons: np.ndarray,
    class_ids: np.ndarray,
    areas: np.ndarray,
    classes: Sequence[ClassInfo],
    spatial_reference: osr.SpatialReference | None,
    area_unit: str,
    *,
    progress: Progress,
    is_cancelled: IsCancelled,
) -> None:
    """One layer (class_id, class_name, area) with its QGIS style in ``layer_styles``."""
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(os.fspath(path))
    layer = dataset.CreateLayer(
        LAYER_NAME, spatial_reference, ogr.wkbPolygon,
        options=[f"GEOMETRY_NAME={GEOMETRY_COLUMN}", "FID=fid",
                 f"DESCRIPTION=land cover classes; area in {area_unit}"],
    )
    layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
    name_field = ogr.FieldDefn("class_name", ogr.OFTString)
    name_field.SetWidth(max(len(c.name) for c in classes))
    layer.CreateField(name_field)
    layer.CreateField(ogr.FieldDefn("area", ogr.OFTReal))
    layer.SetMetadataItem("AREA_UNIT", area_unit)
    names = {c.id: c.name for c in classes}
    definition = layer.GetLayerDefn()
    wkbs = shapely.to_wkb(polygons).tolist()
    # Plain Python values and the typed setters: this loop is the polygon stage's cost.
    rows = zip(wkbs, class_ids.tolist(), areas.tolist(), strict=True)
    dataset.StartTransaction()
    for index, (wkb, class_id, area) in enumerate(rows):
        if index % _WRITE_CHUNK == 0:
            if is_cancelled():
                raise SegmentationCancelled("segmentation cancelled")
            progress(index / len(wkbs))
        feature = ogr.Feature(definition)
        feature.SetFieldInteger64(0, class_id)
        feature.SetFieldString(1, names[class_id])
        feature.SetField(2, area)
        feature.SetGeometryDirectly(ogr.CreateGeometryFromWkb(wkb))
        layer.CreateFeature(feature)
    dataset.CommitTransaction()
    _write_style(dataset, classes)
    dataset = None  # closes the file


def vectorize_classes(
    class_path: Path,
    out_path: Path,
    classes: Sequence[ClassInfo],
    measure: AreaMeasure,
    *,
    simplify: float | None = None,
    progress: Progress = lambda fraction: None,
    is_cancelled: IsCancelled = lambda: False,
) -> int:
    """Class polygons of the class raster at ``class_path`` into a GeoPackage at
    ``out_path``, areas measured by ``measure``, optionally coverage-simplified by
    ``simplify`` (CRS units); returns the number of polygons."""
    dataset = gdal.Open(os.fspath(class_path))
    srs = measure.grid.spatial_reference()
    polygons, class_ids = polygonize(
        dataset.GetRasterBand(1), srs, progress=lambda f: progress(0.3 * f),
        is_cancelled=is_cancelled,
    )
    if simplify is not None and len(polygons):
        polygons = simplify_coverage(polygons, measure.grid, simplify)
    progress(0.4)
    write_geopackage(
        out_path, polygons, class_ids, measure.polygon_areas(polygons), classes, srs,
        measure.unit, progress=lambda f: progress(0.4 + 0.6 * f), is_cancelled=is_cancelled,
    )
    return len(polygons)


def _write_style(dataset: ogr.DataSource, classes: Sequence[ClassInfo]) -> None:
    """The ``layer_styles`` table QGIS reads a layer's default style from."""
    styles = dataset.CreateLayer(STYLE_TABLE, geom_type=ogr.wkbNone)
    for name in ("f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column",
                 "styleName", "styleQML", "styleSLD", "description", "owner", "ui"):
        styles.CreateField(ogr.FieldDefn(name, ogr.OFTString))
    default = ogr.FieldDefn("useAsDefault", ogr.OFTInteger)
    default.SetSubType(ogr.OFSTBoolean)
    styles.CreateField(default)
    styles.CreateField(ogr.FieldDefn("update_time", ogr.OFTDateTime))
    feature = ogr.Feature(styles.GetLayerDefn())
    for name, value in (
        ("f_table_catalog", ""),
        ("f_table_schema", ""),
        ("f_table_name", LAYER_NAME),
        ("f_geometry_column", GEOMETRY_COLUMN),
        ("styleName", LAYER_NAME),
        ("styleQML", qml_style(classes)),
        ("styleSLD", ""),
        ("description", "land cover classes in the model's colours"),
        ("owner", ""),
        ("ui", ""),
    ):
        feature.SetField(name, value)
    feature.SetField("useAsDefault", 1)
    feature.SetFieldNull("update_time")
    styles.CreateFeature(feature)


def qml_style(classes: Sequence[ClassInfo]) -> str:
    """A QGIS style (QML): polygons categorised by ``class_id`` in the classes' colours."""
    categories = "\n".join(
        f'      <category render="true" symbol="{i}" value="{c.id}" type="long" '
        f"label={quoteattr(c.name)}/>"
        for i, c in enumerate(classes)
    )
    def fill(color: tuple[int, int, int]) -> str:
        return ",".join(map(str, color)) + ",255"

    symbols = "\n".join(
        f'      <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">\n'
        f'        <layer class="SimpleFill" enabled="1" locked="0" pass="0">\n'
        f'          <Option type="Map">\n'
        f'            <Option name="color" type="QString" value="{fill(c.color)}"/>\n'
        f'            <Option name="style" type="QString" value="solid"/>\n'
        f'            <Option name="outline_color" type="QString" value="35,35,35,255"/>\n'
        f'            <Option name="outline_style" type="QString" value="solid"/>\n'
        f'            <Option name="outline_width" type="QString" value="0.1"/>\n'
        f'            <Option name="outline_width_unit" type="QString" value="MM"/>\n'
        f"          </Option>\n"
        f"        </layer>\n"
        f"      </symbol>"
        for i, c in enumerate(classes)
    )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.40" styleCategories="Symbology">\n'
        '  <renderer-v2 type="categorizedSymbol" attr="class_id" symbollevels="0" '
        'enableorderby="0" forceraster="0">\n'
        f"    <categories>\n{categories}\n    </categories>\n"
        f"    <symbols>\n{symbols}\n    </symbols>\n"
        "  </renderer-v2>\n"
        "</qgis>\n"
    )
