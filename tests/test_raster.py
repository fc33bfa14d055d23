"""Raster inputs and outputs: checks, nodata, band mapping, alignment, GSD, areas, writing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from osgeo import gdal, ogr, osr
from segment_helpers import (
    LANDSAT,
    NAIP,
    NO_GEOREF,
    RGB_BYTE,
    SAR_COMPLEX,
    SN6_MS,
    SN6_PAN,
    STATS,
)

from landcover.engine.errors import ConfigError, InputRasterError, OutputPathError
from landcover.engine.raster.areas import AreaMeasure
from landcover.engine.raster.grid import Grid, ground_sample_distance
from landcover.engine.raster.source import open_raster, open_source
from landcover.engine.raster.writer import BlockRowWriter, PendingOutputs, create_geotiff

RGB = ("red", "green", "blue")


def _source(paths, names=RGB, stats=STATS["uint8"], **options):
    stats = [stats] * len(names) if isinstance(stats[0], float) else stats
    return open_source(
        paths, mean=[m for m, _ in stats], std=[s for _, s in stats], band_names=names,
        **options,
    )


# ------------------------------------------------------------------------ opening


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_raster(tmp_path / "nothing.tif")


def test_not_a_raster(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("not an image\n")
    with pytest.raises(InputRasterError, match="not a raster GDAL can read"):
        open_raster(text)


def test_vector_file_is_not_a_raster(tmp_path):
    path = tmp_path / "points.gpkg"
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    dataset.CreateLayer("points", None, ogr.wkbPoint)
    dataset = None
    with pytest.raises(InputRasterError, match="not a raster"):
        open_raster(path)


def test_complex_bands_are_refused():
    with pytest.raises(InputRasterError, match=r"complex-valued bands .*CFloat32"):
        open_raster(SAR_COMPLEX)


# ------------------------------------------------------------------------ nodata


def test_landsat_fill_is_data_unless_nodata_is_given():
    raw = gdal.Open(str(LANDSAT)).ReadAsArray()
    fill = (raw == 0).all(axis=0)
    assert 0.3 < fill.mean() < 0.45  # the sample's corner of 0-valued fill
    stats = STATS["landsat"]
    _, valid = _source([LANDSAT], stats=stats).read(0, 0, 256, 256)
    assert valid.all()  # no nodata value in the file: fill counts as data
    data, valid = _source([LANDSAT], stats=stats, nodata=0).read(0, 0, 256, 256)
    np.testing.assert_array_equal(valid, ~fill)
    assert (data[:, fill] == 0).all()  # nodata reaches the model as the band mean


def test_nodata_value_from_the_file():
    raw = gdal.Open(str(RGB_BYTE)).ReadAsArray()
    data, valid = _source([RGB_BYTE]).read(0, 0, 256, 256)
    np.testing.assert_array_equal(valid, ~(raw == 0).all(axis=0))
    assert 0.2 < 1 - valid.mean() < 0.45
    expected = (raw[:, valid].astype(np.float32) - 120.0) / 40.0
    np.testing.assert_allclose(data[:, valid], expected, rtol=1e-6)


def test_window_outside_the_raster_is_reflected_and_invalid():
    source = _source([NAIP], bands=[1, 2, 3])
    inside, _ = source.read(0, 0, 64, 64)
    data, valid = source.read(-16, -8, 64, 64)
    assert data.shape == (3, 64, 64) and valid.shape == (64, 64)
    assert not valid[:8].any() and not valid[:, :16].any() and valid[8:, 16:].all()
    np.testing.assert_array_equal(data[:, 8:, 16:], inside[:, :56, :48])
    np.testing.assert_array_equal(data[:, 7, 16:], inside[:, 1, :48])  # mirrored row


# ------------------------------------------------------------------------ bands


def test_band_count_mismatch_needs_bands():
    with pytest.raises(InputRasterError, match=r"expects 3 bands .* has 4.*--bands 1,2,3"):
        _source([NAIP])
    with pytest.raises(InputRasterError, match="use a model made for these bands"):
        _source([SN6_PAN])


def test_bands_pick_and_reorder():
    raw = gdal.Open(str(NAIP)).ReadAsArray().astype(np.float32)
    data, _ = _source([NAIP], bands=[4, 1, 2]).read(10, 20, 32, 32)
    np.testing.assert_allclose(data[0], (raw[3, 20:52, 10:42] - 120) / 40)
    np.testing.assert_allclose(data[2], (raw[1, 20:52, 10:42] - 120) / 40)


@pytest.mark.parametrize(
    ("bands", "message"), [([1, 2], "lists 2 bands"), ([1, 2, 9], "--bands 9")]
)
def test_bad_bands(bands, message):
    with pytest.raises(ConfigError, match=message):
        _source([NAIP], bands=bands)


# ------------------------------------------------------------------------ alignment


def test_second_input_is_warped_onto_the_first_grid():
    names = ("ms1", "ms2", "ms3", "ms4", "pan")
    stats = [STATS["sn6_ms"]] * 4 + [STATS["sn6_pan"]]
    source = _source([SN6_MS, SN6_PAN], names=names, stats=stats)
    assert source.grid == Grid.of(gdal.Open(str(SN6_MS)))
    data, valid = source.read(0, 0, 64, 64)
    assert data.shape == (5, 64, 64)
    # 0.5 m pan averaged onto the 1 m grid: close to the mean of each 2x2 block.
    pan = gdal.Open(str(SN6_PAN)).ReadAsArray().astype(np.float64)
    blocks = pan.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    warped = data[4] * 150.0 + 300.0
    inner = (slice(2, -2), slice(2, -2))
    assert np.corrcoef(warped[inner].ravel(), blocks[inner].ravel())[0, 1] > 0.99
    assert valid[inner].all()


def test_inputs_without_georeferencing_cannot_be_aligned():
    with pytest.raises(InputRasterError, match="no georeferencing"):
        _source([NAIP, NO_GEOREF], names=("r", "g", "b", "n", "x", "y", "z"))


# ------------------------------------------------------------------------ GSD, areas


def test_ground_sample_distance():
    assert ground_sample_distance(Grid.of(gdal.Open(str(NAIP)))) == pytest.approx(5.0)
    assert ground_sample_distance(Grid.of(gdal.Open(str(RGB_BYTE)))) == pytest.approx(300.04)
    assert ground_sample_distance(Grid.of(gdal.Open(str(NO_GEOREF)))) is None
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    at_60_north = Grid(100, 100, (10.0, 0.001, 0.0, 60.05, 0.0, -0.001), wgs84.ExportToWkt())
    # 0.001 degree: 111 m north-south, 56 m east-west at 60 degrees north.
    assert ground_sample_distance(at_60_north) == pytest.approx(math.sqrt(110.6 * 55.7), rel=0.01)


def _geographic_grid(wkt: str, cell: float = 1.0, y0: float = 1.0) -> Grid:
    return Grid(3, 2, (0.0, cell, 0.0, y0, 0.0, -cell), wkt)


def test_pixel_areas_on_a_sphere_are_exact():
    sphere = osr.SpatialReference()
    radius = 6_371_000.0
    sphere.SetGeogCS("sphere", "sphere", "sphere", radius, 0.0)
    measure = AreaMeasure.for_grid(_geographic_grid(sphere.ExportToWkt()))
    assert measure.unit == "m2"
    areas = measure.pixel_areas(0, 2)
    # A lat/lon cell on a sphere: R^2 * dlon * (sin(lat1) - sin(lat0)).
    expected = radius**2 * math.radians(1) * (math.sin(math.radians(1)) - 0.0)
    assert areas.shape == (2, 1)
    assert areas[0, 0] == pytest.approx(expected, rel=1e-12)
    assert areas[1, 0] == pytest.approx(expected, rel=1e-12)  # symmetric about the equator


def test_pixel_areas_on_the_wgs84_ellipsoid_match_a_geodesic_library():
    pyproj = pytest.importorskip("pyproj")
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    measure = AreaMeasure.for_grid(_geographic_grid(wgs84.ExportToWkt(), 0.5, 60.5))
    ours = measure.pixel_areas(0, 1)[0, 0]
    # pyproj integrates geodesic edges: densify the parallels so they follow the cell.
    lons = np.r_[np.linspace(0, 0.5, 200), np.linspace(0.5, 0, 200)]
    lats = np.r_[np.full(200, 60.5), np.full(200, 60.0)]
    theirs, _ = pyproj.Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)
    assert ours == pytest.approx(abs(theirs), rel=1e-6)


def test_polygon_areas_equal_the_sum_of_their_pixels_in_lon_lat():
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    grid = Grid(4, 4, (5.0, 0.25, 0.0, 48.0, 0.0, -0.25), wgs84.ExportToWkt())
    measure = AreaMeasure.for_grid(grid)
    pixels = measure.pixel_areas(0, 4)
    # An L-shaped polygon with a hole: rows 0-3 of column 0, row 3 of columns 1-3, and a
    # square ring around pixel (1, 2) made of its 8 neighbours.
    l_shape = shapely.Polygon([(5.0, 48.0), (5.25, 48.0), (5.25, 47.25), (6.0, 47.25),
                               (6.0, 47.0), (5.0, 47.0)])
    ring = shapely.Polygon([(5.25, 48.0), (6.0, 48.0), (6.0, 47.25), (5.25, 47.25)],
                           [[(5.5, 47.75), (5.75, 47.75), (5.75, 47.5), (5.5, 47.5)]])
    areas = measure.polygon_areas(np.array([l_shape, ring]))
    assert areas[0] == pytest.approx(pixels[:, 0].sum() + 3 * pixels[3, 0], rel=1e-9)
    assert areas[1] == pytest.approx(3 * pixels[:3, 0].sum() - pixels[1, 0], rel=1e-9)


def test_projected_and_unreferenced_area_units():
    naip = AreaMeasure.for_grid(Grid.of(gdal.Open(str(NAIP))))
    assert (naip.unit, naip.square_metres_per_unit) == ("m2", 1.0)
    assert naip.pixel_areas(0, 3).tolist() == [[25.0]] * 3
    plain = AreaMeasure.for_grid(Grid.of(gdal.Open(str(NO_GEOREF))))
    assert (plain.unit, plain.square_metres_per_unit, plain.mean_pixel_area()) == ("px", None, 1)


# ------------------------------------------------------------------------ writing


def test_block_row_writer_writes_pieces_in_whole_block_rows(tmp_path):
    grid = Grid(300, 600, (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), "")
    dataset = create_geotiff(tmp_path / "out.tif", grid, 2)
    writer = BlockRowWriter([dataset], max_piece_rows=100)
    expected = np.random.default_rng(0).integers(0, 250, (2, 600, 300), dtype=np.uint8)
    for row in range(0, 600, 100):  # tile rows of 100, pieces right to left
        for col in (200, 100, 0):
            writer.put(row, col, expected[:, row: row + 100, col: col + 100])
        writer.rows_complete(row + 100)
        assert writer.row0 % 256 == 0 or writer.row0 == 600  # whole block-rows only
    writer.flush()
    del writer, dataset
    np.testing.assert_array_equal(gdal.Open(str(tmp_path / "out.tif")).ReadAsArray(), expected)


def test_pending_outputs_commit_and_discard(tmp_path):
    final = tmp_path / "classes.tif"
    final.write_bytes(b"old result")
    (tmp_path / "classes.tif.aux.xml").write_text("<old/>")
    pending = PendingOutputs()
    temporary = pending.reserve(final)
    assert temporary.parent == tmp_path and temporary.name.startswith(".classes.")
    temporary.write_bytes(b"new result")
    pending.discard()
    assert final.read_bytes() == b"old result"  # a failed run leaves the old output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "classes.tif.aux.xml"]

    pending = PendingOutputs()
    pending.reserve(final).write_bytes(b"new result")
    pending.commit()
    assert final.read_bytes() == b"new result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif"]  # stale aux gone


def test_unwritable_outputs(tmp_path):
    pending = PendingOutputs()
    with pytest.raises(OutputPathError, match="does not exist"):
        pending.reserve(tmp_path / "missing" / "classes.tif")
    with pytest.raises(OutputPathError, match="is a folder"):
        pending.reserve(tmp_path)
    pending.reserve(tmp_path / "a.tif")
    with pytest.raises(ConfigError, match="two outputs"):
        pending.reserve(tmp_path / "a.tif")
