"""``landcover evaluate``: a model on labelled images, and a finished map against
reference polygons or a reference raster."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
import yaml
from osgeo import gdal, ogr, osr
from segment_helpers import DATA, LANDSAT, NAIP, make_package, read_band

from landcover.engine.cli import main
from landcover.engine.commands import evaluate
from landcover.engine.commands.evaluate import format_result
from landcover.engine.inference.segment import segment
from landcover.engine.metrics import ConfusionMatrix
from landcover.engine.modelfile import ClassInfo
from landcover.engine.raster.grid import Grid
from landcover.engine.raster.writer import create_class_raster

gdal.UseExceptions()
ogr.UseExceptions()

POLYGONS = DATA / "landsat8_reference_polygons.geojson"  # field name: water/crop/tree/developed
# A 30 m grid on the Landsat scene's pixels around the four polygons.
SCENE_ORIGIN = (717345.0, -2776995.0)
MAP_WINDOW = (660, 600, 210, 570)  # column, row, width, height in the scene
MAP_CLASSES = ["Bare", "water", "Crop", "tree", "developed"]  # names match case-insensitively


def _evaluate(capsys, *argv):
    code = main(["evaluate", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _result(capsys, *argv):
    code, out, err = _evaluate(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


# ------------------------------------------------------------------ a finished map


def _map_grid() -> Grid:
    column, row, width, height = MAP_WINDOW
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32621)
    return Grid(width, height, (SCENE_ORIGIN[0] + 30 * column, 30.0, 0.0,
                                SCENE_ORIGIN[1] - 30 * row, 0.0, -30.0), srs.ExportToWkt())


def _write_map(path, values, names=MAP_CLASSES, *, nodata=True):
    """A class raster as segment writes it (names, colours, nodata 255) on the map grid."""
    classes = [ClassInfo(i, name, (i * 40, 100, 200)) for i, name in enumerate(names)]
    dataset = create_class_raster(path, _map_grid(), classes)
    band = dataset.GetRasterBand(1)
    if not nodata:
        band.DeleteNoDataValue()
    band.WriteArray(values)
    dataset = None
    return path


def _map_values(seed=0):
    """Random classes in blocks of 5 px, with a nodata stripe."""
    rng = np.random.default_rng(seed)
    height, width = MAP_WINDOW[3], MAP_WINDOW[2]
    values = np.kron(rng.integers(0, len(MAP_CLASSES), (height // 5 + 1, width // 5 + 1)),
                     np.ones((5, 5), np.int64))[:height, :width].astype(np.uint8)
    values[110:115] = 255  # across the crop polygon
    return values


def _polygon_reference():
    """Map class id of the polygon holding each pixel centre (-1: none), by shapely."""
    grid = _map_grid()
    x0, dx, _, y0, _, dy = grid.transform
    xs = x0 + dx * (np.arange(grid.width) + 0.5)
    ys = y0 + dy * (np.arange(grid.height) + 0.5)
    xx, yy = np.meshgrid(xs, ys)
    reference = np.full((grid.height, grid.width), -1)
    source = ogr.Open(str(POLYGONS))
    keys = [n.casefold() for n in MAP_CLASSES]
    for feature in source.GetLayer(0):
        polygon = shapely.from_wkb(bytes(feature.GetGeometryRef().ExportToWkb()))
        reference[shapely.contains_xy(polygon, xx, yy)] = keys.index(feature.GetField("name"))
    return reference


def _expected_matrix(values, reference):
    matrix = ConfusionMatrix(len(MAP_CLASSES), ignore_index=-1)
    reference = np.where(values == 255, -1, reference)
    matrix.update(np.where(values == 255, 0, values), reference)
    return matrix


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of 7 rows, so the map and reference are read in many pieces."""
    monkeypatch.setattr(evaluate, "BLOCK_PIXELS", MAP_WINDOW[2] * 7)


def test_map_against_reference_polygons_matches_pixel_centres(tmp_path, capsys):
    values = _map_values()
    reference = _polygon_reference()
    assert set(np.unique(reference)) == {-1, 1, 2, 3, 4}  # all four polygons on the map
    expected = _expected_matrix(values, reference)
    mapped = _write_map(tmp_path / "map.tif", values)
    result = _result(capsys, "--map", mapped, "--reference", POLYGONS, "--reference-field",
                     "name")
    assert result["confusion_matrix"] == expected.matrix.tolist()
    assert result["polygons"] == 4 and result["pixels"] == expected.total > 500
    inside_nodata = ((values == 255) & (reference >= 0)).sum()
    assert result["unmapped_reference_pixels"] == inside_nodata > 0
    assert result["miou"] == pytest.approx(expected.miou)
    assert result["classes"][0]["name"] == "Bare" and result["classes"][0]["accuracy"] is None


def test_polygons_in_a_geopackage_in_another_crs_with_class_ids(tmp_path, capsys):
    """Integer ids in the default field class_id, stored in EPSG:4326 and reprojected."""
    gpkg = tmp_path / "reference.gpkg"
    keys = [n.casefold() for n in MAP_CLASSES]
    gdal.VectorTranslate(str(gpkg), str(POLYGONS), format="GPKG", dstSRS="EPSG:4326",
                         layerName="land_cover")
    source = ogr.Open(str(gpkg), 1)
    layer = source.GetLayer(0)
    layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
    for feature in layer:
        feature.SetField("class_id", keys.index(feature.GetField("name")))
        layer.SetFeature(feature)
    source = layer = None
    values = _map_values(seed=1)
    expected = _expected_matrix(values, _polygon_reference())
    result = _result(capsys, "--map", _write_map(tmp_path / "map.tif", values), "--reference",
                     gpkg)
    assert np.abs(np.array(result["confusion_matrix"]) - expected.matrix).sum() <= 2


def test_map_against_a_reference_raster_matched_by_class_names(tmp_path, capsys):
    values = _map_values()
    truth = _map_values(seed=2)  # in map ids; 255 = unlabelled
    # The reference raster names the same classes in another order.
    order = [3, 0, 4, 1, 2]  # reference id -> map id
    reference_values = np.full(truth.shape, 255, np.uint8)
    for reference_id, map_id in enumerate(order):
        reference_values[truth == map_id] = reference_id
    reference_path = tmp_path / "reference.tif"
    _write_map(reference_path, reference_values, [MAP_CLASSES[i].upper() for i in order])
    expected = _expected_matrix(values, np.where(truth == 255, -1, truth))
    result = _result(capsys, "--map", _write_map(tmp_path / "map.tif", values),
                     "--reference", reference_path)
    assert result["confusion_matrix"] == expected.matrix.tolist()
    assert result["oa"] == pytest.approx(expected.overall_accuracy)


def test_maps_without_class_names_match_by_id_up_to_the_highest_seen(tmp_path, capsys):
    values = np.minimum(_map_values(), 2).astype(np.uint8)
    truth = np.minimum(_map_values(seed=3), 2).astype(np.uint8)
    map_path, reference_path = tmp_path / "map.tif", tmp_path / "reference.tif"
    for path, data in ((map_path, values), (reference_path, truth)):
        dataset = gdal.GetDriverByName("GTiff").Create(str(path), data.shape[1], data.shape[0])
        dataset.SetGeoTransform(_map_grid().geotransform)
        dataset.SetProjection(_map_grid().crs_wkt)
        dataset.GetRasterBand(1).WriteArray(data)
        dataset = None
    result = _result(capsys, "--map", map_path, "--reference", reference_path,
                     "--ignore-value", "0")
    expected = ConfusionMatrix(3, ignore_index=0)
    expected.update(values, truth)
    assert result["confusion_matrix"] == expected.matrix.tolist()
    assert [c["name"] for c in result["classes"]] == ["class 0", "class 1", "class 2"]
    assert result["classes"][0]["iou"] is not None  # class 0 is still predicted


def test_table_output(tmp_path, capsys):
    mapped = _write_map(tmp_path / "map.tif", _map_values())
    code, out, _ = _evaluate(capsys, "--map", mapped, "--reference", POLYGONS,
                             "--reference-field", "name")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["class", "IoU", "F1", "acc", "prec", "ref", "pixels"]
    # Bare is predicted but in no polygon: IoU, F1 and precision 0, accuracy undefined
    assert lines[1].split() == ["Bare", "0.00", "0.00", "-", "0.00", "0"]
    assert any(line.startswith("mIoU") and "OA" in line for line in lines)
    assert "confusion matrix (rows: reference, columns: prediction; pixels)" in lines
    assert "reference pixels fall on the map's nodata" in out


def test_format_result_marks_absent_classes():
    matrix = ConfusionMatrix(3)
    matrix.update(np.array([0, 0, 1]), np.array([0, 1, 1]))
    text = format_result(matrix.to_dict(["water", "forest", "urban"]))
    urban = next(line for line in text.splitlines() if line.startswith("urban "))
    assert urban.split()[1:5] == ["-", "-", "-", "-"]
    water = next(line for line in text.splitlines() if line.startswith("water "))
    assert water.split()[1:5] == ["50.00", "66.67", "100.00", "50.00"]


def _one_line_error(capsys, *argv):
    code, out, err = _evaluate(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("landcover: error: ")
    return lines[0]


def test_bad_map_inputs_are_one_line_errors(tmp_path, capsys):
    mapped = _write_map(tmp_path / "map.tif", _map_values())
    message = _one_line_error(capsys, "--map", mapped, "--reference", POLYGONS)
    assert "no field 'class_id'" in message and "name" in message
    other = tmp_path / "other.tif"
    gdal.Translate(str(other), str(mapped), srcWin=[10, 0, 100, 100])
    message = _one_line_error(capsys, "--map", mapped, "--reference", other)
    assert "not on the grid" in message and "gdalwarp" in message and "EPSG:32621" in message
    few = _write_map(tmp_path / "few.tif", np.minimum(_map_values(), 2), MAP_CLASSES[:3])
    message = _one_line_error(capsys, "--map", few, "--reference", POLYGONS,
                              "--reference-field", "name")
    assert "'tree' matches no class of the map" in message
    message = _one_line_error(capsys, "--map", mapped, "--reference", tmp_path / "missing.tif")
    assert "does not exist" in message
    message = _one_line_error(capsys, "--map", mapped, "--reference", LANDSAT)
    assert "has 3 bands" in message
    message = _one_line_error(capsys, "--map", mapped)
    assert "--map and --reference go together" in message
    message = _one_line_error(capsys, "--map", mapped, "--reference", POLYGONS, "--model", "x")
    assert "either" in message


# ------------------------------------------------------------------ a model on images


CLASSES = 4


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("models") / "rgb.lcm", num_classes=CLASSES)


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory, package):
    """Two real NAIP crops (smaller and larger than a 128 px tile) as PNG, with masks that
    are the model's own segmentation of them (segment's path, not evaluate's) and a block
    of unlabelled pixels (255)."""
    root = tmp_path_factory.mktemp("labelled")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for name, window in (("a_small", [10, 20, 96, 80]), ("b_large", [100, 50, 200, 150])):
        image = root / "images" / f"{name}.png"
        gdal.Translate(str(image), str(NAIP), srcWin=window, bandList=[1, 2, 3], format="PNG")
        classes = root / f"{name}_classes.tif"
        segment(image, package, classes, device="cpu", log=lambda level, message: None)
        mask = read_band(classes)
        mask[:8, :8] = 255
        dataset = gdal.GetDriverByName("MEM").Create("", mask.shape[1], mask.shape[0])
        dataset.GetRasterBand(1).WriteArray(mask)
        gdal.GetDriverByName("PNG").CreateCopy(str(root / "masks" / f"{name}.png"), dataset)
        for stray in root.rglob("*.aux.xml"):
            stray.unlink()
    return root


def test_a_model_scores_its_own_segmentation_as_perfect(capsys, package, labelled_folder):
    result = _result(capsys, "--model", package, "--data", labelled_folder, "--device", "cpu")
    assert result["images"] == 2 and result["split"] is None
    assert result["pixels"] == 96 * 80 + 200 * 150 - 2 * 64  # the unlabelled blocks are out
    assert result["oa"] > 0.999  # near-ties may flip with the batch composition
    assert (result["tile"], result["overlap"], result["tta"]) == (128, 32, "none")
    baseline = result["majority_baseline"]
    majority = max(result["classes"], key=lambda c: c["reference_pixels"])
    assert baseline["class"] == majority["name"]
    assert baseline["oa"] == pytest.approx(majority["reference_pixels"] / result["pixels"])
    result = _result(capsys, "--model", package, "--data", labelled_folder, "--device", "cpu",
                     "--tile", "64", "--tta", "d4_plus")
    assert (result["tile"], result["overlap"], result["tta"]) == (64, 16, "d4_plus")


def _config(tmp_path, root, classes, bands=None):
    config = {
        "model": {"name": "unetmamba_tiny"},
        "data": {
            "layout": "folder",
            "root": str(root),
            "mask_encoding": "index",
            "classes": [{"name": n, "color": [i, i, i]} for i, n in enumerate(classes)],
            "bands": bands or [{"name": n, "mean": 120.0, "std": 40.0}
                               for n in ("red", "green", "blue")],
            "holdout": "b_*",
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_config_split_with_its_classes_matched_by_name(tmp_path, capsys, package,
                                                         labelled_folder):
    # The config lists the model's classes in reverse: mask value k is config class k, so
    # scores are only right if config classes are matched to the model's by name.
    reversed_root = tmp_path / "reversed"
    (reversed_root / "masks").mkdir(parents=True)
    (reversed_root / "images").symlink_to(labelled_folder / "images")
    for mask in (labelled_folder / "masks").iterdir():
        values = gdal.Open(str(mask)).ReadAsArray()
        values = np.where(values == 255, 255, CLASSES - 1 - values).astype(np.uint8)
        dataset = gdal.GetDriverByName("MEM").Create("", values.shape[1], values.shape[0])
        dataset.GetRasterBand(1).WriteArray(values)
        gdal.GetDriverByName("PNG").CreateCopy(str(reversed_root / "masks" / mask.name), dataset)
    names = [f"class {i}" for i in reversed(range(CLASSES))]
    result = _result(capsys, "--model", package, "--data", _config(tmp_path, reversed_root, names),
                     "--split", "val", "--device", "cpu")
    assert result["images"] == 1 and result["split"] == "val"
    assert result["pixels"] == 200 * 150 - 64
    assert result["oa"] > 0.999  # matched by id instead, it would be far lower
    assert [c["name"] for c in result["classes"]] == [f"class {i}" for i in range(CLASSES)]


def test_bad_data_inputs_are_one_line_errors(tmp_path, capsys, package, labelled_folder):
    message = _one_line_error(capsys, "--model", package)
    assert "--model and --data go together" in message
    other = _config(tmp_path, labelled_folder, ["water", "forest", "urban", "bare", "snow"])
    message = _one_line_error(capsys, "--model", package, "--data", other)
    assert "not among the model's" in message
    renamed = _config(tmp_path, labelled_folder, ["water", "forest", "urban", "bare"])
    code, _, err = _evaluate(capsys, "--model", package, "--data", renamed, "--json")
    assert code == 0 and "matching them by id" in err
    two_bands = _config(tmp_path, labelled_folder, [f"class {i}" for i in range(CLASSES)],
                        bands=[{"name": "a", "mean": 0, "std": 1}, {"name": "b", "mean": 0,
                                                                   "std": 1}])
    message = _one_line_error(capsys, "--model", package, "--data", two_bands)
    assert "2 bands" in message and "expects 3" in message
    message = _one_line_error(capsys, "--model", package, "--data", tmp_path / "nothing")
    assert "no such config file or folder" in message
