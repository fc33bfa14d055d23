"""``segment()`` end to end on real rasters with tiny models."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import shapely
import torch
from osgeo import gdal, ogr
from segment_helpers import (
    LANDSAT,
    LANDSAT_FILL,
    NAIP,
    NO_GEOREF,
    RGB_BYTE,
    SN6_MS,
    SN6_PAN,
    STATS,
    fitted_package,
    make_package,
    read_band,
)

from landcover.engine.errors import SegmentationCancelled
from landcover.engine.inference.predictor import Predictor
from landcover.engine.inference.segment import Segmenter, segment
from landcover.engine.inference.tiler import TileGrid
from landcover.engine.inference.vectorize import LAYER_NAME, STYLE_TABLE
from landcover.engine.modelfile import load_model_package

gdal.UseExceptions()
ogr.UseExceptions()


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("models") / "rgb.lcm")


@pytest.fixture(scope="module")
def landsat_model(tmp_path_factory):
    return make_package(
        tmp_path_factory.mktemp("models") / "landsat.lcm", bands=("blue", "green", "red"),
        stats=STATS["landsat"],
    )


@pytest.fixture(scope="module")
def naip_small(tmp_path_factory):
    """A georeferenced 96 x 96 RGB crop of the NAIP sample (5 m): one tile, fast."""
    path = tmp_path_factory.mktemp("rasters") / "naip_small.tif"
    gdal.Translate(str(path), str(NAIP), srcWin=[100, 100, 96, 96], bandList=[1, 2, 3])
    return path


def _polygons(path):
    """(class ids, shapely polygons, area field) of the class layer."""
    dataset = ogr.Open(str(path))
    layer = dataset.GetLayerByName(LAYER_NAME)
    ids, geometries, areas = [], [], []
    for feature in layer:
        ids.append(feature.GetField("class_id"))
        geometries.append(shapely.from_wkb(bytes(feature.GetGeometryRef().ExportToWkb())))
        areas.append(feature.GetField("area"))
    return np.array(ids, int), np.array(geometries, object), np.array(areas)


def _quiet(level, message):
    pass


# ------------------------------------------------------------------------ outputs


def test_outputs_line_up_with_the_input_and_carry_their_classes(tmp_path, rgb_model):
    out = tmp_path / "classes.tif"
    result = segment(RGB_BYTE, rgb_model, out, out_vector=tmp_path / "polygons.gpkg",
                     out_confidence=tmp_path / "confidence.tif", log=_quiet)
    source, classes = gdal.Open(str(RGB_BYTE)), gdal.Open(str(out))
    for output in (classes, gdal.Open(str(tmp_path / "confidence.tif"))):
        assert (output.RasterXSize, output.RasterYSize) == (256, 256)
        assert output.GetGeoTransform() == source.GetGeoTransform()
        assert output.GetSpatialRef().IsSame(source.GetSpatialRef())
    band = classes.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    assert band.GetCategoryNames() == ["class 0", "class 1", "class 2", "class 3"]
    assert band.GetRasterColorTable().GetColorEntry(2)[:3] == (0, 128, 0)
    structure = classes.GetMetadata("IMAGE_STRUCTURE")
    assert structure["COMPRESSION"] == "DEFLATE" and band.GetBlockSize() == [256, 256]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "classes.areas.json", "classes.tif", "classes.tif.aux.xml", "confidence.tif",
        "polygons.gpkg",
    ]
    confidence = read_band(tmp_path / "confidence.tif")
    values = read_band(out)
    valid = values != 255
    assert (confidence[~valid] == 255).all()
    assert confidence[valid].min() >= 25 and confidence[valid].max() <= 100  # 4 classes
    table = json.loads((tmp_path / "classes.areas.json").read_text())
    assert table["area_unit"] == "m2"
    assert [c["pixels"] for c in table["classes"]] == [c.pixels for c in result.classes]
    assert sum(c["percent"] for c in table["classes"]) == pytest.approx(100.0)


def test_polygons_cover_exactly_the_class_pixels(tmp_path, rgb_model):
    result = segment(RGB_BYTE, rgb_model, tmp_path / "c.tif", out_vector=tmp_path / "p.gpkg",
                     log=_quiet)
    ids, polygons, areas = _polygons(tmp_path / "p.gpkg")
    pixel_area = abs(np.prod(gdal.Open(str(RGB_BYTE)).GetGeoTransform()[1::4]))
    pixels = np.bincount(read_band(tmp_path / "c.tif").ravel(), minlength=256)
    for info in result.classes:
        mine = ids == info.id
        assert info.pixels == pixels[info.id]
        assert areas[mine].sum() == pytest.approx(pixels[info.id] * pixel_area, rel=1e-9)
        assert shapely.area(polygons[mine]).sum() == pytest.approx(areas[mine].sum())
        assert info.area == pytest.approx(areas[mine].sum(), rel=1e-9)
    assert result.polygons == len(polygons)


def test_geographic_rasters_get_areas_in_square_metres_on_the_ellipsoid(tmp_path, rgb_model):
    lonlat = tmp_path / "lonlat.tif"
    gdal.Warp(str(lonlat), str(RGB_BYTE), dstSRS="EPSG:4326", resampleAlg="near")
    result = segment(lonlat, rgb_model, tmp_path / "c.tif", out_vector=tmp_path / "p.gpkg",
                     log=_quiet)
    assert result.area_unit == "m2"
    ids, _, areas = _polygons(tmp_path / "p.gpkg")
    for info in result.classes:
        assert areas[ids == info.id].sum() == pytest.approx(info.area, rel=1e-9)
    # The same ground as in UTM (the warp keeps the extent roughly): within 1%.
    total = sum(c.area for c in result.classes)
    projected = segment(RGB_BYTE, rgb_model, tmp_path / "u.tif", log=_quiet)
    assert total == pytest.approx(sum(c.area for c in projected.classes), rel=0.01)


# ------------------------------------------------------------------------ seams

SEAM_TILE = 128


def _edge_band(grids, shape, distance=4):
    """Pixels within ``distance`` of an internal tile edge of any of the tilings."""
    near = np.zeros(shape, bool)
    for grid in grids:
        for starts, size, axis in ((grid.xs, grid.tile_width, 1), (grid.ys, grid.tile_height, 0)):
            for edge in {s for s in starts} | {s + size for s in starts}:
                if 0 < edge < shape[axis]:
                    index = [slice(None), slice(None)]
                    index[axis] = slice(max(edge - distance, 0), edge + distance)
                    near[tuple(index)] = True
    return near


def _seam_ratio(first, second, grids):
    """Disagreement near internal tile edges over disagreement elsewhere."""
    near = _edge_band(grids, first.shape)
    differ = first != second
    elsewhere = differ[~near].mean()
    assert elsewhere > 0.002, "the tilings agree everywhere: the test would prove nothing"
    print(f"disagreement near tile edges {differ[near].mean():.4f}, elsewhere {elsewhere:.4f}")
    return differ[near].mean() / elsewhere


def _cut_tiles(model, image, tile, offset):
    """The plain tiler the blender replaces: cut, predict, paste; no overlap, no blending."""
    height, width = image.shape[1:]
    starts = [range(-offset, size, tile) if offset else range(0, size, tile)
              for size in (height, width)]
    pad = tile + offset
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    classes = np.zeros((height + 2 * pad, width + 2 * pad), np.uint8)
    with torch.inference_mode():
        for y in starts[0]:
            for x in starts[1]:
                window = padded[:, y + pad: y + pad + tile, x + pad: x + pad + tile]
                logits = model(torch.from_numpy(np.ascontiguousarray(window))[None])
                classes[y + pad: y + pad + tile, x + pad: x + pad + tile] = logits[0].argmax(0)
    grids = TileGrid(width, height, tile, tile, 0, tuple(starts[1]), tuple(starts[0]))
    return classes[pad: pad + height, pad: pad + width], grids


def test_no_seams_between_blended_tiles_while_cut_tiles_show_them(tmp_path):
    package = load_model_package(fitted_package())
    runs = []
    for offset in (0, SEAM_TILE // 2):
        out = tmp_path / f"blended_{offset}.tif"
        segment(NAIP, package, out, bands=[1, 2, 3], tile=SEAM_TILE, overlap=32,
                tile_offset=(offset, offset), log=_quiet)
        runs.append((read_band(out), TileGrid.plan(384, 384, SEAM_TILE, 32,
                                                    offset=(offset, offset))))
    blended = _seam_ratio(runs[0][0], runs[1][0], [runs[0][1], runs[1][1]])

    image = gdal.Open(str(NAIP)).ReadAsArray()[:3].astype(np.float32)
    image = (image - STATS["uint8"][0]) / STATS["uint8"][1]
    (cut_a, grid_a), (cut_b, grid_b) = (
        _cut_tiles(package.model, image, SEAM_TILE, offset) for offset in (0, SEAM_TILE // 2)
    )
    cut = _seam_ratio(cut_a, cut_b, [grid_a, grid_b])
    assert blended <= 1.5, f"blended tiles show seams: {blended:.2f}"
    assert cut > 1.5, f"the cutting tiler should show seams, got only {cut:.2f}"
    # The model's classes follow the content: all four, in regions, not pixel noise.
    classes = runs[0][0]
    assert np.bincount(classes.ravel(), minlength=4).min() > 0.02 * classes.size
    assert (classes[:, 1:] != classes[:, :-1]).mean() < 0.1


# ------------------------------------------------------------------------ nodata


def test_landsat_collar_gives_no_polygons_with_nodata_zero(tmp_path, landsat_model):
    fill = (gdal.Open(str(LANDSAT)).ReadAsArray() == 0).all(axis=0)
    result = segment(LANDSAT, landsat_model, tmp_path / "c.tif",
                     out_vector=tmp_path / "p.gpkg", nodata=0, log=_quiet)
    classes = read_band(tmp_path / "c.tif")
    np.testing.assert_array_equal(classes == 255, fill)
    assert result.nodata_pixels == fill.sum()
    _, _, areas = _polygons(tmp_path / "p.gpkg")
    assert areas.sum() == pytest.approx((~fill).sum() * 900.0)
    # Burned back onto the grid, the polygons cover the scene and nothing of the collar.
    burned = gdal.GetDriverByName("MEM").Create("", 256, 256, 1, gdal.GDT_Byte)
    source = gdal.Open(str(LANDSAT))
    burned.SetGeoTransform(source.GetGeoTransform())
    burned.SetProjection(source.GetProjection())
    vector = ogr.Open(str(tmp_path / "p.gpkg"))
    gdal.RasterizeLayer(burned, [1], vector.GetLayerByName(LAYER_NAME), burn_values=[1])
    np.testing.assert_array_equal(burned.ReadAsArray() == 1, ~fill)

    # Without --nodata the file says nothing is nodata: the collar gets classes.
    plain = segment(LANDSAT, landsat_model, tmp_path / "all.tif", log=_quiet)
    assert plain.nodata_pixels == 0 and (read_band(tmp_path / "all.tif") != 255).all()


def test_rgb_byte_collar_from_the_file_nodata(tmp_path, rgb_model):
    raw = gdal.Open(str(RGB_BYTE)).ReadAsArray()
    segment(RGB_BYTE, rgb_model, tmp_path / "c.tif", log=_quiet)
    np.testing.assert_array_equal(read_band(tmp_path / "c.tif") == 255, (raw == 0).all(axis=0))


def test_all_nodata_raster_is_a_valid_empty_result(tmp_path, landsat_model):
    result = segment(LANDSAT_FILL, landsat_model, tmp_path / "c.tif",
                     out_vector=tmp_path / "p.gpkg", nodata=0, log=_quiet)
    assert result.tiles_run == 0 and result.tiles_skipped == result.tiles
    assert (read_band(tmp_path / "c.tif") == 255).all()
    assert result.polygons == 0 and len(_polygons(tmp_path / "p.gpkg")[0]) == 0
    assert all(c.pixels == 0 and c.percent == 0 for c in result.classes)
    assert result.nodata_pixels == 64 * 64


def test_nodata_tiles_skip_the_model(tmp_path, landsat_model):
    package = load_model_package(landsat_model)
    seen = []
    package.model.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    result = segment(LANDSAT, package, tmp_path / "c.tif", nodata=0, tile=64, overlap=0,
                     log=_quiet)
    fill = (gdal.Open(str(LANDSAT)).ReadAsArray() == 0).all(axis=0)
    empty_tiles = sum(fill[y: y + 64, x: x + 64].all() for y in range(0, 256, 64)
                      for x in range(0, 256, 64))
    assert empty_tiles > 0 and result.tiles_skipped == empty_tiles
    assert sum(seen) == result.tiles_run == 16 - empty_tiles


# ------------------------------------------------------------------------ TTA, device


@pytest.mark.parametrize(("tta", "passes"), [("none", 1), ("flip", 3), ("d4", 8)])
def test_tta_forward_passes(tmp_path, rgb_model, naip_small, tta, passes):
    package = load_model_package(rgb_model)
    seen = []
    package.model.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    messages = []
    result = segment(naip_small, package, tmp_path / "c.tif", tta=tta, tile=64, overlap=0,
                     log=lambda level, message: messages.append(message))
    assert result.passes_per_tile == passes
    assert sum(seen) == result.tiles_run * passes
    plural = "es" if passes > 1 else ""
    assert f"TTA {tta}: {passes} forward pass{plural} per tile" in messages


def test_d4_tta_makes_the_result_equivariant_to_the_square_symmetries(tmp_path, rgb_model):
    image = gdal.Open(str(NAIP)).ReadAsArray()[:3, :64, :64]  # one tile
    results = []
    for turns in (0, 1):
        path = tmp_path / f"rotated_{turns}.tif"
        dataset = gdal.GetDriverByName("GTiff").Create(str(path), 64, 64, 3, gdal.GDT_Byte)
        for band in range(3):
            dataset.GetRasterBand(band + 1).WriteArray(np.rot90(image[band], turns))
        dataset = None
        segment(path, rgb_model, tmp_path / f"classes_{turns}.tif", tta="d4", log=_quiet)
        results.append(read_band(tmp_path / f"classes_{turns}.tif"))
    agreement = (np.rot90(results[0], 1) == results[1]).mean()
    assert agreement > 0.999  # a wrong inverse transform would scramble it


def test_cuda_out_of_memory_halves_the_batch():
    class RunsOutOfMemoryAboveTwo(torch.nn.Module):
        """Stands in for a GPU that can hold at most two tiles at a time."""

        def forward(self, x):
            if len(x) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return x[:, :2] * 1.0

    messages = []
    predictor = Predictor(RunsOutOfMemoryAboveTwo(), torch.device("cpu"), batch_size=8,
                          log=lambda level, message: messages.append((level, message)))
    tiles = np.random.default_rng(0).random((7, 3, 32, 32), dtype=np.float32)
    probabilities = predictor.predict(tiles)
    expected = torch.softmax(torch.from_numpy(tiles[:, :2]), dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6)
    assert predictor.batch_size == 2
    assert messages == [
        ("warning", "CUDA out of memory with batches of 8 tiles: halving to 4 and going on"),
        ("warning", "CUDA out of memory with batches of 4 tiles: halving to 2 and going on"),
    ]


@pytest.mark.cuda
def test_cuda_run_uses_mixed_precision(tmp_path, rgb_model):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    result = segment(RGB_BYTE, rgb_model, tmp_path / "c.tif", device="cuda", log=_quiet)
    assert result.device.startswith("cuda:0") and result.precision.startswith("mixed")


# ------------------------------------------------------------------------ cancel


def test_cancel_removes_everything_and_keeps_an_older_output(tmp_path, rgb_model):
    old = tmp_path / "classes.tif"
    old.write_bytes(b"an older run's result")
    calls = []

    def cancel_after_first_batch():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(SegmentationCancelled):
        segment(RGB_BYTE, rgb_model, old, out_vector=tmp_path / "p.gpkg",
                out_confidence=tmp_path / "conf.tif", tile=64, batch_size=2,
                is_cancelled=cancel_after_first_batch, log=_quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif"]
    assert old.read_bytes() == b"an older run's result"


def test_cancel_during_polygons(tmp_path, rgb_model, naip_small):
    segmenter = Segmenter(naip_small, rgb_model, log=_quiet)
    with pytest.raises(SegmentationCancelled):
        segmenter.run(tmp_path / "c.tif", out_vector=tmp_path / "p.gpkg",
                      is_cancelled=lambda: segmenter.tiles_done == len(segmenter.tiles))
    assert list(tmp_path.iterdir()) == []


def test_progress_rises_to_one(tmp_path, rgb_model):
    fractions = []
    segment(RGB_BYTE, rgb_model, tmp_path / "c.tif", out_vector=tmp_path / "p.gpkg",
            min_area=200_000, progress=fractions.append, log=_quiet)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 5


# ------------------------------------------------------------------------ inputs


def test_several_inputs_are_aligned_onto_the_first_grid(tmp_path):
    model = make_package(
        tmp_path / "fusion.lcm", bands=("ms1", "ms2", "ms3", "ms4", "pan"),
        stats=[STATS["sn6_ms"]] * 4 + [STATS["sn6_pan"]],
    )
    result = segment([SN6_MS, SN6_PAN], model, tmp_path / "c.tif", log=_quiet)
    out, first = gdal.Open(str(tmp_path / "c.tif")), gdal.Open(str(SN6_MS))
    assert (out.RasterXSize, out.RasterYSize) == (64, 64)
    assert out.GetGeoTransform() == first.GetGeoTransform()
    assert result.nodata_pixels == 0 and result.tiles_run == 1


def test_raster_smaller_than_a_tile_is_padded(tmp_path, rgb_model):
    small = tmp_path / "small.tif"
    gdal.Translate(str(small), str(NAIP), srcWin=[0, 0, 50, 40], bandList=[1, 2, 3])
    result = segment(small, rgb_model, tmp_path / "c.tif", tile=128, log=_quiet)
    assert result.tile_size == (64, 64) and result.tiles == 1
    assert read_band(tmp_path / "c.tif").shape == (40, 50)


def test_no_georeferencing_works_in_pixel_units_with_a_warning(tmp_path, rgb_model):
    result = segment(NO_GEOREF, rgb_model, tmp_path / "c.tif", out_vector=tmp_path / "p.gpkg",
                     log=_quiet)
    assert any("no georeferencing" in w for w in result.warnings)
    out = gdal.Open(str(tmp_path / "c.tif"))
    assert out.GetGeoTransform(can_return_null=True) is None and out.GetProjection() == ""
    assert result.area_unit == "px"
    assert sum(c.area for c in result.classes) == 160 * 128
    ids, _, areas = _polygons(tmp_path / "p.gpkg")
    for info in result.classes:
        assert areas[ids == info.id].sum() == pytest.approx(info.pixels)


def test_gsd_auto_resamples_between_1_25x_and_4x(tmp_path, naip_small):
    model = make_package(tmp_path / "m.lcm", gsd_m=2.5)
    result = segment(naip_small, model, tmp_path / "c.tif", out_confidence=tmp_path / "p.tif",
                     log=_quiet)
    assert result.resampled and result.processing_gsd_m == pytest.approx(2.5)
    for name in ("c.tif", "p.tif"):  # back on the input's grid
        out = gdal.Open(str(tmp_path / name))
        assert (out.RasterXSize, out.RasterYSize) == (96, 96)
        assert out.GetGeoTransform() == gdal.Open(str(naip_small)).GetGeoTransform()
    assert result.nodata_pixels == 0
    # Processed on a 192 x 192 grid of 2.5 m pixels.
    assert result.tiles == len(TileGrid.plan(192, 192, 128, 32)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.areas.json", "c.tif", "c.tif.aux.xml", "m.lcm", "p.tif"
    ]  # the probabilities on the model's grid were scratch

    native = segment(naip_small, make_package(tmp_path / "n.lcm", gsd_m=5.5),
                     tmp_path / "n.tif", log=_quiet)
    assert not native.resampled  # within 25%


def test_gsd_beyond_4x_runs_native_and_names_both(tmp_path, naip_small):
    model = make_package(tmp_path / "m.lcm", gsd_m=0.3)
    result = segment(naip_small, model, tmp_path / "c.tif", log=_quiet)
    assert not result.resampled
    assert any("(5 m)" in w and "(0.3 m)" in w for w in result.warnings)


def test_gsd_option_in_metres(tmp_path, rgb_model, naip_small):
    result = segment(naip_small, rgb_model, tmp_path / "c.tif", gsd="10", log=_quiet)
    assert result.resampled and result.processing_gsd_m == 10
    assert read_band(tmp_path / "c.tif").shape == (96, 96)


# ------------------------------------------------------------------------ polygons


def test_min_area_sieves_the_raster_so_raster_and_polygons_agree(tmp_path):
    min_area = 40 * 25.0  # 40 pixels of 5 m
    options = {"bands": [1, 2, 3], "log": _quiet}
    raw = segment(NAIP, fitted_package(), tmp_path / "raw.tif",
                  out_vector=tmp_path / "raw.gpkg", **options)
    result = segment(NAIP, fitted_package(), tmp_path / "c.tif", out_vector=tmp_path / "p.gpkg",
                     min_area=min_area, **options)
    ids, _, areas = _polygons(tmp_path / "p.gpkg")
    _, _, raw_areas = _polygons(tmp_path / "raw.gpkg")
    assert (raw_areas < min_area).sum() > 10 and len(areas) < raw.polygons
    # GDAL's sieve keeps a small piece only when no neighbour is at least as large.
    assert (areas >= min_area).all()
    for info in result.classes:  # the raster's area table and the polygons agree
        assert areas[ids == info.id].sum() == pytest.approx(info.area, rel=1e-9)


def test_simplify_keeps_a_coverage(tmp_path):
    result = segment(NAIP, fitted_package(), tmp_path / "c.tif", out_vector=tmp_path / "p.gpkg",
                     bands=[1, 2, 3], simplify=10.0, log=_quiet)
    _, polygons, areas = _polygons(tmp_path / "p.gpkg")
    segment(NAIP, fitted_package(), tmp_path / "r.tif", out_vector=tmp_path / "r.gpkg",
            bands=[1, 2, 3], log=_quiet)
    _, raw_polygons, _ = _polygons(tmp_path / "r.gpkg")
    vertices = shapely.get_num_coordinates(polygons).sum()
    assert vertices < 0.75 * shapely.get_num_coordinates(raw_polygons).sum()
    assert all(shapely.is_valid(polygons))
    # Neighbours still share their boundaries: no gaps or overlaps, and the whole raster
    # stays covered.
    assert shapely.coverage_is_valid(polygons)
    union = shapely.union_all(polygons)
    assert union.area == pytest.approx(shapely.area(polygons).sum(), rel=1e-6)
    assert union.area == pytest.approx(384 * 384 * 25.0, rel=1e-3)
    assert areas.sum() == pytest.approx(shapely.area(polygons).sum())
    assert result.polygons == len(polygons)


def test_geopackage_carries_its_qgis_style(tmp_path, rgb_model, qgis_app):
    from qgis.core import QgsVectorLayer

    segment(RGB_BYTE, rgb_model, tmp_path / "c.tif", out_vector=tmp_path / "p.gpkg",
            log=_quiet)
    dataset = ogr.Open(str(tmp_path / "p.gpkg"))
    styles = dataset.GetLayerByName(STYLE_TABLE)
    assert styles.GetFeatureCount() == 1
    dataset = None
    layer = QgsVectorLayer(f"{tmp_path / 'p.gpkg'}|layername={LAYER_NAME}", "classes", "ogr")
    assert layer.isValid()
    _, loaded = layer.loadDefaultStyle()
    assert loaded
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "class_id"
    colors = {c.value(): c.symbol().color().getRgb()[:3] for c in renderer.categories()}
    assert colors == {0: (0, 0, 255), 1: (255, 200, 0), 2: (0, 128, 0), 3: (200, 0, 0)}
    assert [c.label() for c in renderer.categories()] == [f"class {i}" for i in range(4)]
    del layer


# ------------------------------------------------------------------------ memory


def _stacked_naip(path, copies):
    """A 128-pixel-wide strip of the NAIP sample repeated ``copies`` times downwards (real
    pixels, a taller raster)."""
    image = np.ascontiguousarray(gdal.Open(str(NAIP)).ReadAsArray()[:3, :, :128])
    dataset = gdal.GetDriverByName("GTiff").Create(
        str(path), 128, 384 * copies, 3, gdal.GDT_Byte, ["TILED=YES"]
    )
    for copy in range(copies):
        dataset.WriteRaster(0, 384 * copy, 128, 384, image.tobytes())
    dataset = None
    return path


def test_memory_does_not_grow_with_the_raster(tmp_path, rgb_model):
    package = load_model_package(rgb_model)
    peaks = []
    for copies in (2, 8):
        path = _stacked_naip(tmp_path / f"naip_{copies}.tif", copies)
        segmenter = Segmenter(path, package, tile=128, overlap=0, log=_quiet)
        tracemalloc.start()
        segmenter.run(tmp_path / f"c_{copies}.tif", out_confidence=tmp_path / f"p_{copies}.tif")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # Four times the rows; a whole-raster float32 accumulator would add 0.8 MB per copy.
    # (Both runs fill whole batches of tiles, so their working sets are alike.)
    assert peaks[1] - peaks[0] < 0.3e6, peaks
