"""Dataset layouts: loveda (real LoveDA crops), isprs (`landcover prepare isprs` on
synthetic tiles), raster (real Landsat 8 + real reference polygons) and hunan (synthetic
multi-modal patches); one training step on each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from landcover.engine.cli import main as cli_main
from landcover.engine.errors import ConfigError
from landcover.engine.presets import PRESETS
from landcover.training.config import resolve_config
from landcover.training.datasets import build_dataset
from landcover.training.train import train

DATA = Path(__file__).parent / "data"
LOVEDA = {"layout": "loveda", "root": str(DATA / "loveda"), "domains": ["Rural"]}
ISPRS_COLORS = np.array([c.color for c in PRESETS["vaihingen"].classes], dtype=np.uint8)
LANDSAT = DATA / "landsat8_polygons_window.tif"
POLYGONS = DATA / "landsat8_reference_polygons.geojson"
LANDSAT_CLASSES = [
    {"name": "water", "color": [0, 0, 255]},
    {"name": "crop", "color": [255, 200, 0]},
    {"name": "tree", "color": [0, 128, 0]},
    {"name": "developed", "color": [200, 0, 0]},
]
# Around the "tree" polygon (map coordinates, EPSG:32621).
TREE_REGION = [742300.0, -2802500.0, 743000.0, -2801700.0]


def raster_config(**extra) -> dict:
    return {
        "layout": "raster", "image": str(LANDSAT), "polygons": str(POLYGONS),
        "class_field": "name", "classes": LANDSAT_CLASSES, "window_size": 64,
        "train_windows": 6, "val_region": TREE_REGION, **extra,
    }


def write_tif(path: Path, data: np.ndarray, dtype: int, *, origin=(500000.0, 4000000.0),
              pixel: float = 1.0, nodata: float | None = None) -> None:
    data = data[None] if data.ndim == 2 else data
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = gdal.GetDriverByName("GTiff").Create(
        str(path), data.shape[2], data.shape[1], data.shape[0], dtype
    )
    dataset.SetGeoTransform((origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    dataset.SetProjection(srs.ExportToWkt())
    for index, band in enumerate(data, start=1):
        dataset.GetRasterBand(index).WriteArray(band)
        if nodata is not None:
            dataset.GetRasterBand(index).SetNoDataValue(nodata)
    dataset = None


# ---------------------------------------------------------------------------- loveda


def test_loveda_reads_the_published_layout():
    train_set, val_set = build_dataset(LOVEDA, "train"), build_dataset(LOVEDA, "val")
    assert len(train_set) == 2 and len(val_set) == 1
    assert [c.name for c in train_set.classes] == [
        "background", "building", "road", "water", "barren", "forest", "agriculture"
    ]
    assert [b.name for b in train_set.bands] == ["red", "green", "blue"]
    sample = train_set[0]
    assert sample["name"] == "0_64_672"
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == np.float32
    raw = gdal.Open(str(DATA / "loveda/Train/Rural/masks_png/0_64_672.png")).ReadAsArray()
    np.testing.assert_array_equal(sample["mask"], raw - 1)  # raw 1..7 -> classes 0..6
    assert val_set[0]["name"] == "1_288_576"


def test_loveda_no_data_is_ignored_and_foreign_values_refused(tmp_path):
    root = tmp_path / "LoveDA"
    shutil.copytree(DATA / "loveda", root)
    mask_path = root / "Train/Rural/masks_png/0_64_672.png"
    mask = gdal.Open(str(mask_path)).ReadAsArray()
    mask[:4] = 0  # LoveDA's no-data code
    gdal.GetDriverByName("PNG").CreateCopy(str(mask_path), _mem(mask))
    sample = build_dataset({**LOVEDA, "root": str(root)}, "train")[0]
    assert (sample["mask"][:4] == 255).all() and (sample["mask"][4:] < 7).all()
    mask[10, 10] = 9
    gdal.GetDriverByName("PNG").CreateCopy(str(mask_path), _mem(mask))
    with pytest.raises(ConfigError, match="label value 9 is not one of the 7 classes"):
        build_dataset({**LOVEDA, "root": str(root)}, "train")


@pytest.mark.parametrize(
    ("data", "split", "error", "message"),
    [
        (LOVEDA, "test", FileNotFoundError, "LoveDA test masks are not public"),
        ({**LOVEDA, "domains": ["Urban", "Rural"]}, "train", FileNotFoundError,
         r"Train/Urban/images_png"),
        ({**LOVEDA, "root": "/no/such/LoveDA"}, "train", FileNotFoundError,
         "dataset folder not found"),
        ({**LOVEDA, "domains": ["Suburban"]}, "train", ConfigError, "use Urban and/or Rural"),
        ({**LOVEDA, "classes": [{"name": "a", "color": [0, 0, 0]},
                                {"name": "b", "color": [1, 1, 1]}]},
         "train", ConfigError, r"label value \d is not one of the 2 classes"),
    ],
)
def test_loveda_errors_are_one_line(data, split, error, message):
    with pytest.raises(error, match=message) as caught:
        build_dataset(data, split)
    assert "\n" not in str(caught.value)


def _mem(array: np.ndarray) -> gdal.Dataset:
    array = array[None] if array.ndim == 2 else array
    memory = gdal.GetDriverByName("MEM").Create(
        "", array.shape[2], array.shape[1], array.shape[0], gdal.GDT_Byte
    )
    for index, band in enumerate(array, start=1):
        memory.GetRasterBand(index).WriteArray(band)
    return memory


# ---------------------------------------------------------------------------- isprs
# ISPRS data may not be redistributed, so these tiles are SYNTHETIC: script-made GeoTIFF
# images and RGB-coded labels in the six ISPRS colours, named as the published files.


def isprs_ids(height: int, width: int, seed: int) -> np.ndarray:
    """Blocks of the six classes, the pattern shifted per tile."""
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows // 16 + cols // 20 + seed) % 6).astype(np.uint8)


def write_isprs_tile(image: Path, label: Path, ids: np.ndarray, bands: int = 3,
                     eroded: Path | None = None) -> None:
    rng = np.random.default_rng(ids.shape[0])
    pixels = (ids[None] * 40 + rng.integers(0, 30, (bands, *ids.shape))).astype(np.uint8)
    write_tif(image, pixels, gdal.GDT_Byte, pixel=0.09)
    write_tif(label, ISPRS_COLORS[ids].transpose(2, 0, 1), gdal.GDT_Byte, pixel=0.09)
    if eroded is not None:
        rgb = ISPRS_COLORS[ids].copy()
        edges = np.zeros(ids.shape, bool)
        edges[:, 1:] |= ids[:, 1:] != ids[:, :-1]
        edges[1:] |= ids[1:] != ids[:-1]
        rgb[edges] = 0  # boundaries painted black, as in the _noBoundary labels
        write_tif(eroded, rgb.transpose(2, 0, 1), gdal.GDT_Byte, pixel=0.09)


@pytest.fixture(scope="module")
def vaihingen(tmp_path_factory) -> Path:
    """Areas 1 (train) and 2 (test), 150 x 130 px, with full and eroded labels."""
    raw = tmp_path_factory.mktemp("vaihingen_raw")
    for area in (1, 2):
        name = f"top_mosaic_09cm_area{area}.tif"
        write_isprs_tile(raw / "top" / name, raw / "gts" / name, isprs_ids(130, 150, area),
                         eroded=raw / "eroded" / f"top_mosaic_09cm_area{area}_noBoundary.tif")
    return raw


def test_prepare_isprs_vaihingen_cuts_tiles_by_the_common_split(vaihingen, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert cli_main([
        "prepare", "isprs", "--dataset", "vaihingen", "--images", str(vaihingen / "top"),
        "--labels", str(vaihingen / "gts"), "--eroded-labels", str(vaihingen / "eroded"),
        "--out", str(out), "--patch", "64", "--stride", "64",
    ]) == 0
    assert "train: 9 patches from 1 tiles" in capsys.readouterr().out
    assert cli_main(["prepare", "isprs", "--dataset", "vaihingen", "--images",
                     str(vaihingen / "top"), "--labels", str(vaihingen / "gts"),
                     "--out", str(out)]) == 2
    assert "already holds prepared patches" in capsys.readouterr().err
    summary = json.loads((out / "isprs.json").read_text())
    assert summary["splits"] == {"train": ["1"], "test": ["2"]}
    assert "3" in summary["missing_tiles"]  # the other common-split areas are not here
    # x starts 0, 64, 86 (the last moved back to the edge); y starts 0, 64, 66
    names = sorted(p.stem for p in (out / "train" / "images").iterdir())
    assert names == sorted(f"area1_{x}_{y}" for x in (0, 64, 86) for y in (0, 64, 66))

    data = {"layout": "isprs", "root": str(out)}
    train_set, val_set = build_dataset(data, "train"), build_dataset(data, "val")
    assert [c.name for c in train_set.classes][:2] == ["impervious surfaces", "building"]
    assert [b.name for b in train_set.bands] == ["nir", "red", "green"]
    index = [p.stem for p in train_set.images].index("area1_86_66")
    sample = train_set[index]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == np.float32
    np.testing.assert_array_equal(sample["mask"], isprs_ids(130, 150, 1)[66:130, 86:150])
    # val reads the test tiles, whose masks come from the eroded labels: boundaries ignored
    assert len(val_set) == 9 and all(p.stem.startswith("area2_") for p in val_set.images)
    mask = val_set[0]["mask"]
    expected = isprs_ids(130, 150, 2)[:64, :64]
    assert (mask == 255).any()
    np.testing.assert_array_equal(mask[mask != 255], expected[mask != 255])


def test_prepare_isprs_potsdam_names_kinds_and_custom_splits(tmp_path):
    raw = tmp_path / "potsdam"
    for tile in ("2_10", "2_11"):
        ids = isprs_ids(70, 70, int(tile[-1]))
        for kind, bands in (("RGB", 3), ("RGBIR", 4)):
            write_isprs_tile(raw / "img" / f"top_potsdam_{tile}_{kind}.tif",
                             raw / "lbl" / f"top_potsdam_{tile}_label.tif", ids, bands)
    out = tmp_path / "out"
    assert cli_main([
        "prepare", "isprs", "--dataset", "potsdam", "--images", str(raw / "img"),
        "--labels", str(raw / "lbl"), "--out", str(out), "--patch", "64", "--stride", "64",
        "--image-kind", "RGBIR", "--split", "train=2_10", "--split", "val=2_11",
    ]) == 0
    # 4 bands: GeoTIFF patches (PNG would read the 4th band as alpha)
    assert sorted(p.name for p in (out / "val" / "images").iterdir())[0] == "2_11_0_0.tif"
    data = {"layout": "isprs", "root": str(out)}
    val_set = build_dataset(data, "val")  # the prepared val folder, not test
    assert val_set[0]["image"].shape == (4, 64, 64)
    assert [b.name for b in val_set.bands] == ["red", "green", "blue", "nir"]
    assert (val_set[0]["mask"] < 6).all()  # full labels: nothing ignored
    with pytest.raises(FileNotFoundError, match="no test patches"):
        build_dataset(data, "test")


def test_prepare_isprs_refuses_bad_tiles_in_one_line(vaihingen, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(vaihingen, raw)
    label = raw / "gts" / "top_mosaic_09cm_area1.tif"
    rgb = gdal.Open(str(label)).ReadAsArray()
    rgb[:, 5, 5] = (255, 0, 255)  # magenta is no ISPRS colour
    write_tif(label, rgb, gdal.GDT_Byte)
    argv = ["prepare", "isprs", "--dataset", "vaihingen", "--images", str(raw / "top"),
            "--labels", str(raw / "gts"), "--out", str(tmp_path / "out"), "--patch", "64"]
    assert cli_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert r"colour (255, 0, 255) is neither" in error and "\n" not in error
    label.unlink()
    assert cli_main(argv) == 2
    assert "tile 1 has no label" in capsys.readouterr().err
    assert cli_main([*argv[:-2], "--split", "train"]) == 2
    assert "write NAME=ID" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="landcover prepare isprs"):
        build_dataset({"layout": "isprs", "root": str(raw), "dataset": "vaihingen"}, "train")


# ---------------------------------------------------------------------------- raster


def test_raster_polygons_windows_are_seeded_and_keep_out_of_the_val_region():
    train_set = build_dataset(raster_config(), "train")
    assert len(train_set) == 6 and train_set.bands[0].name == "band_1"
    boxes = [train_set.train_box(i) for i in range(6)]
    assert boxes == [train_set.train_box(i) for i in range(6)]  # the same every time
    reseeded = build_dataset(raster_config(seed=1), "train")
    assert boxes != [reseeded.train_box(i) for i in range(6)]
    (hx, hy, hw, hh), = train_set.held_out
    for x, y, w, h in boxes:
        assert x + w <= hx or hx + hw <= x or y + h <= hy or hy + hh <= y
    labels = set()
    for index in range(6):
        sample = train_set[index]
        assert sample["image"].shape == (3, 64, 64) and sample["mask"].dtype == np.uint8
        assert np.mean(sample["mask"] != 255) >= 0.01
        labels |= set(np.unique(sample["mask"]).tolist())
    assert labels <= {0, 1, 255} and 2 not in labels  # the tree polygon is held out
    val_set = build_dataset(raster_config(), "val")
    assert len(val_set) == 1
    sample = val_set[0]
    assert sample["image"].shape[1:] == sample["mask"].shape
    assert set(np.unique(sample["mask"]).tolist()) == {2, 255}  # tree, unlabelled


def _rasterize_polygons(path: Path, pixel: float, origin: tuple[float, float],
                        size: int) -> None:
    vector = ogr.Open(str(POLYGONS))
    layer = vector.GetLayer(0)
    memory = ogr.GetDriverByName("Memory").CreateDataSource("")
    copy = memory.CreateLayer("l", layer.GetSpatialRef(), ogr.wkbPolygon)
    copy.CreateField(ogr.FieldDefn("id", ogr.OFTInteger))
    names = [c["name"] for c in LANDSAT_CLASSES]
    for feature in layer:
        out = ogr.Feature(copy.GetLayerDefn())
        out.SetField("id", names.index(feature.GetField("name")) + 1)  # 0 stays nodata
        out.SetGeometry(feature.GetGeometryRef().Clone())
        copy.CreateFeature(out)
    target = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 1, gdal.GDT_Byte)
    target.SetGeoTransform((origin[0], pixel, 0, origin[1], 0, -pixel))
    target.SetProjection(layer.GetSpatialRef().ExportToWkt())
    target.GetRasterBand(1).SetNoDataValue(0)
    gdal.RasterizeLayer(target, [1], copy, options=["ATTRIBUTE=id"])
    target = None


def test_raster_label_rasters_on_the_same_or_another_grid(tmp_path):
    image = gdal.Open(str(LANDSAT))
    gt = image.GetGeoTransform()
    same, finer = tmp_path / "same.tif", tmp_path / "finer.tif"
    _rasterize_polygons(same, 30.0, (gt[0], gt[3]), 256)
    _rasterize_polygons(finer, 10.0, (gt[0] + 5.0, gt[3] - 5.0), 700)
    by_polygons = build_dataset(raster_config(), "train")
    for path, agreement in ((same, 1.0), (finer, 0.9)):
        by_raster = build_dataset(
            raster_config(polygons=None, labels=str(path), mask_offset=1), "train"
        )
        box = by_polygons.train_box(0)
        expected = by_polygons._read(box)[1]
        got = by_raster._read(box)[1]
        labelled = expected != 255
        assert np.mean(got[labelled] == expected[labelled]) >= agreement


def test_raster_image_nodata_becomes_ignore(tmp_path):
    corner = DATA / "landsat8_corner.tif"  # 0-valued fill in its corner, no nodata set
    labels = tmp_path / "labels.tif"
    image = gdal.Open(str(corner))
    gt = image.GetGeoTransform()
    write_tif(labels, np.ones((256, 256), np.uint8), gdal.GDT_Byte, origin=(gt[0], gt[3]),
              pixel=30.0)
    target = gdal.Open(str(labels), gdal.GA_Update)
    target.SetProjection(image.GetProjection())
    target = None
    config = raster_config(image=str(corner), polygons=None, labels=str(labels),
                           nodata=0, window_size=256, val_region=None)
    sample = build_dataset(config, "train")[0]
    fill = (sample["image"] == 0).all(axis=0)
    assert 0.2 < fill.mean() < 0.6
    assert (sample["mask"][fill] == 255).all() and (sample["mask"][~fill] == 1).all()


@pytest.mark.parametrize(
    ("extra", "split", "error", "message"),
    [
        ({"polygons": None}, "train", ConfigError, "exactly one of data.labels"),
        ({"class_field": "kind"}, "train", ConfigError, r"class_field 'kind' is not a field"),
        ({"classes": LANDSAT_CLASSES[:3]}, "train", ConfigError,
         r"name = 'developed' is neither a class name"),
        ({"val_region": [0, 0, 10, 10]}, "val", ConfigError, "does not overlap"),
        ({"val_region": None}, "val", ConfigError, "needs data.val_region"),
        ({"image": "/no/such.tif"}, "train", FileNotFoundError, "image not found"),
        ({"bands": [{"name": "b", "mean": 0, "std": 1}]}, "train", ConfigError, "has 3 bands"),
    ],
)
def test_raster_errors_are_one_line(extra, split, error, message):
    with pytest.raises(error, match=message) as caught:
        build_dataset(raster_config(**extra), split)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------- hunan
# The Hunan set is not in this repository (nor its licence checked), so these patches are
# SYNTHETIC: 32 x 32 GeoTIFFs in AMM-FuseNet's folder and file naming, raw label codes.


@pytest.fixture(scope="module")
def hunan(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("Hunan")
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 1), ("test", 1)):
        for index in range(count):
            stem = f"hunan_{{}}_{split}{index}.tif"
            write_tif(root / "s2_dir" / split / stem.format("s2"),
                      rng.integers(100, 4000, (13, 32, 32)).astype(np.uint16), gdal.GDT_UInt16)
            write_tif(root / "s1_dir" / split / stem.format("s1"),
                      rng.normal(-15, 4, (2, 32, 32)).astype(np.float32), gdal.GDT_Float32)
            write_tif(root / "dem_dir" / split / stem.format("topo"),
                      rng.uniform(30, 900, (2, 32, 32)).astype(np.float32), gdal.GDT_Float32)
            raw = rng.integers(1, 11, (32, 32)).astype(np.uint8)  # raw codes 1..10
            raw[0, :3] = (0, 255, 0)  # no-data codes
            write_tif(root / "ann_dir" / split / stem.format("lc"), raw, gdal.GDT_Byte)
    return root


def _stack_of(root: Path, split: str, names: list[str], tokens: list[str]) -> np.ndarray:
    files = sorted((root / "ann_dir" / split).iterdir())
    return np.stack([
        np.concatenate([
            gdal.Open(str(root / f"{name}_dir" / split / f.name.replace("lc", token)))
            .ReadAsArray().reshape(-1, 32, 32)[: 1 if name == "dem" else None]
            for name, token in zip(names, tokens, strict=True)
        ]) for f in files
    ])


def test_hunan_stacks_modalities_with_train_min_max(hunan):
    data = {"layout": "hunan", "root": str(hunan)}
    train_set, val_set = build_dataset(data, "train"), build_dataset(data, "val")
    assert len(train_set) == 3 and len(val_set) == 1
    assert [(m.name, len(m.bands)) for m in train_set.modalities] == [("s2", 13), ("s1", 2)]
    sample = train_set[0]
    assert sample["image"].shape == (15, 32, 32) and sample["image"].dtype == np.float32
    stack = _stack_of(hunan, "train", ["s2", "s1"], ["s2", "s1"])
    np.testing.assert_array_equal(sample["image"], stack[0])
    low, high = stack.min(axis=(0, 2, 3)), stack.max(axis=(0, 2, 3))
    for bands in (train_set.bands, val_set.bands):  # val normalises with train's statistics
        np.testing.assert_allclose([b.mean for b in bands], low, rtol=1e-6)
        np.testing.assert_allclose([b.std for b in bands], high - low, rtol=1e-6)
    raw = gdal.Open(str(sorted((hunan / "ann_dir/train").iterdir())[0])).ReadAsArray()
    expected = np.array([255, 0, 1, 2, 1, 3, 4, 6, 6, 5, 6])[np.where(raw == 255, 0, raw)]
    np.testing.assert_array_equal(sample["mask"], expected)
    assert (sample["mask"][0, :3] == 255).all()

    with_dem = build_dataset({**data, "modalities": ["s2", "s1", "dem"]}, "val")
    assert with_dem[0]["image"].shape == (16, 32, 32)  # the DEM's band 1 only
    assert with_dem.modalities[2].bands == ("elevation",)


@pytest.mark.parametrize(
    ("extra", "break_file", "error", "message"),
    [
        ({"modalities": ["s2", "lidar"]}, None, ConfigError, "list some of s2, s1, dem"),
        ({"bands": [{"name": "x", "mean": 0, "std": 1}]}, None, ConfigError,
         "lists 1 bands; modalities s2, s1 have 15"),
        ({"label_map": {1: 7}}, None, ConfigError, "class id 0..6"),
        ({}, "s1_missing", FileNotFoundError, "has no s1 file"),
        ({}, "label_11", ConfigError, "label value 11 is not one of the 7 classes"),
        ({}, "s2_bands", ConfigError, "has 3 bands; s2 needs 13"),
        ({"root": "/no/such/Hunan"}, None, FileNotFoundError, "dataset folder not found"),
    ],
)
def test_hunan_errors_are_one_line(hunan, tmp_path, extra, break_file, error, message):
    root = tmp_path / "Hunan"
    shutil.copytree(hunan, root)
    first = sorted((root / "ann_dir/train").iterdir())[0]
    if break_file == "s1_missing":
        (root / "s1_dir/train" / first.name.replace("lc", "s1")).unlink()
    elif break_file == "label_11":
        write_tif(first, np.full((32, 32), 11, np.uint8), gdal.GDT_Byte)
    elif break_file == "s2_bands":
        write_tif(root / "s2_dir/train" / first.name.replace("lc", "s2"),
                  np.zeros((3, 32, 32), np.uint16), gdal.GDT_UInt16)
    with pytest.raises(error, match=message) as caught:
        dataset = build_dataset({"layout": "hunan", "root": str(root), **extra}, "train")
        dataset[0]
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize("layout", ["loveda", "isprs", "raster", "hunan"])
def test_one_training_step_on_each_layout(layout, vaihingen, hunan, tmp_path):
    if layout == "loveda":
        data = dict(LOVEDA)
    elif layout == "isprs":
        out = tmp_path / "prepared"
        assert cli_main([
            "prepare", "isprs", "--dataset", "vaihingen", "--images", str(vaihingen / "top"),
            "--labels", str(vaihingen / "gts"), "--out", str(out), "--patch", "64",
        ]) == 0
        data = {"layout": "isprs", "root": str(out)}
    elif layout == "raster":
        data = raster_config(train_windows=2)
    else:
        data = {"layout": "hunan", "root": str(hunan)}
    config = resolve_config({
        "model": {"name": "unetmamba_tiny"},
        "data": {**data, "crop_size": 64, "batch_size": 2, "samples_per_epoch": 2,
                 "mosaic_p": 0.0},
        "trainer": {"max_steps": 1, "max_epochs": 1, "seed": 1, "progress_bar": False,
                    "limit_val_batches": 1},
    })
    summary = train(config, tmp_path / "run")
    assert summary["steps"] == 1
    assert summary["val_metrics"] is not None
