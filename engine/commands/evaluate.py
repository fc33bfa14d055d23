"""``landcover evaluate``: accuracy of a model on a labelled data set, or of a finished map.

Two modes, both ending in one confusion matrix and the scores of
:mod:`landcover.engine.metrics` (per-class IoU, F1, accuracy and precision; mIoU, mF1,
OA, mAcc), printed as a table or, with ``--json``, as one JSON document:

- ``--model FILE --data CONFIG.yaml|FOLDER``: the model package predicts every image of
  the split (``build_dataset(config["data"], split)``), through the same tiling and
  blending as ``segment`` (:func:`~landcover.engine.inference.array.predict_array`).
  A FOLDER holds ``images/`` and ``masks/`` whose mask values are the model's class ids
  (``--mask-encoding color``: its class colours) and is evaluated whole.
- ``--map CLASSES.tif --reference REF``: a class raster against a reference raster on the
  same grid, or against reference polygons rasterised onto the map's grid (pixel centres
  inside a polygon take its class). Both are read a block of rows at a time. Reference
  classes are matched to the map's by category name where both have names, else by id.
  Reference pixels without a map value (its nodata) are counted apart, not scored.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from landcover.engine.commands.options import add_inference_arguments
from landcover.engine.errors import ConfigError, InputRasterError

if TYPE_CHECKING:
    from landcover.engine.metrics import ConfusionMatrix

# Pixels read per block in map mode (int64 arrays of a few times this stay small).
BLOCK_PIXELS = 1 << 22
# Class ids a map may hold: 0..254 (255 is the class rasters' nodata).
MAX_MAP_CLASSES = 255
# Reference pixels to leave out of the matrix (map mode).
UNLABELLED = -1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("a model on a labelled data set")
    data.add_argument("--model", metavar="FILE", help="model package")
    data.add_argument("--data", metavar="CONFIG.yaml|FOLDER",
                      help="a training config (its data section), or a folder of images and "
                           "masks")
    data.add_argument("--split", choices=("train", "val", "test"), default="val",
                      help="split of a config's data set (default: val)")
    data.add_argument("--images", default="images", metavar="SUBFOLDER",
                      help="FOLDER: sub-folder of images (default: images)")
    data.add_argument("--masks", default="masks", metavar="SUBFOLDER",
                      help="FOLDER: sub-folder of masks, named like their images "
                           "(default: masks)")
    data.add_argument("--mask-suffix", default=".png",
                      help="FOLDER: mask file = image stem + this (default: .png)")
    data.add_argument("--mask-encoding", choices=("index", "color"), default="index",
                      help="FOLDER: masks hold the model's class ids (index) or its class "
                           "colours (color)")
    add_inference_arguments(data)
    assess = parser.add_argument_group("accuracy assessment of a finished map")
    assess.add_argument("--map", metavar="CLASSES.tif", help="class raster to assess")
    assess.add_argument("--reference", metavar="REF.tif|REF.gpkg",
                        help="reference raster on the map's grid, or reference polygons")
    assess.add_argument("--reference-field", default="class_id", metavar="FIELD",
                        help="polygons: the class field, integer ids or class names "
                             "(default: class_id)")
    assess.add_argument("--reference-layer", metavar="NAME",
                        help="polygons: the layer (default: the only one)")
    parser.add_argument("--ignore-value", type=int, action="append", default=[],
                        metavar="VALUE",
                        help="a reference (or FOLDER index mask) value without a class; "
                             "repeatable")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    model_mode = args.model is not None or args.data is not None
    map_mode = args.map is not None or args.reference is not None
    if model_mode == map_mode:
        raise ConfigError("give either --model and --data (a model on a data set) or --map "
                          "and --reference (a finished map)")
    if model_mode:
        if args.model is None or args.data is None:
            raise ConfigError("--model and --data go together; give both")
        result = _evaluate_model(args)
    else:
        if args.map is None or args.reference is None:
            raise ConfigError("--map and --reference go together; give both")
        result = _assess_map(args)
    result["seconds"] = round(time.perf_counter() - started, 3)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


def _log(message: str) -> None:
    print(f"landcover: {message}", file=sys.stderr)


def _key(name: str) -> str:
    return name.strip().casefold()


# ------------------------------------------------------------------ a model on a data set


def _build_dataset(args: argparse.Namespace, meta: Any) -> Any:
    """The labelled images: a config's split, or a whole folder described by the model."""
    from landcover.training.datasets import build_dataset

    data = Path(args.data)
    if data.is_dir():
        config = {
            "layout": "folder",
            "root": os.fspath(data),
            "images": args.images,
            "masks": args.masks,
            "mask_suffix": args.mask_suffix,
            "mask_encoding": args.mask_encoding,
            "classes": [{"name": c.name, "color": list(c.color)} for c in meta.classes],
            "ignore_values": args.ignore_value,
            "bands": [b.to_dict() for b in meta.bands],
        }
        # Without a {split} folder or a holdout, the folder layout's train split is every
        # image/mask pair: the whole folder.
        return build_dataset(config, "train")
    if not data.is_file():
        raise FileNotFoundError(f"--data {data}: no such config file or folder")
    from landcover.training.config import load_config

    return build_dataset(load_config(data)["data"], args.split)


def _class_lookup(dataset: Any, meta: Any) -> np.ndarray | None:
    """Data set class id -> model class id (None: the same), matched by name."""
    data_names = [c.name for c in dataset.classes]
    if [_key(n) for n in data_names] == [_key(n) for n in meta.class_names]:
        return None
    model_ids = {_key(c.name): c.id for c in meta.classes}
    unknown = [n for n in data_names if _key(n) not in model_ids]
    if not unknown:
        return np.array([model_ids[_key(n)] for n in data_names], np.int64)
    if len(data_names) == meta.num_classes:
        _log(f"warning: the data set's classes ({', '.join(data_names)}) are not the model's "
             f"({', '.join(meta.class_names)}): matching them by id")
        return None
    raise ConfigError(
        f"the data set's classes {', '.join(unknown)} are not among the model's "
        f"({', '.join(meta.class_names)}); use a data set labelled with the model's classes"
    )


def _evaluate_model(args: argparse.Namespace) -> dict[str, Any]:
    from landcover.engine.inference.array import predict_array
    from landcover.engine.inference.predictor import Predictor, select_device
    from landcover.engine.metrics import ConfusionMatrix
    from landcover.engine.modelfile import load_model_package

    device, device_name = select_device(args.device)
    package = load_model_package(args.model, device=device)
    meta = package.meta
    dataset = _build_dataset(args, meta)
    data_bands = [b.name for b in dataset.bands]
    if len(data_bands) != meta.in_channels:
        raise ConfigError(
            f"the data set has {len(data_bands)} bands ({', '.join(data_bands)}) but the "
            f"model expects {meta.in_channels} ({', '.join(meta.band_names)})"
        )
    if [_key(n) for n in data_bands] != [_key(n) for n in meta.band_names]:
        _log(f"warning: the data set's bands ({', '.join(data_bands)}) are named unlike the "
             f"model's ({', '.join(meta.band_names)}): taken in order")
    if len(dataset) == 0:
        raise ConfigError(f"the {args.split} split of {args.data} holds no images")
    lookup = _class_lookup(dataset, meta)
    tile, overlap = meta.tiling(args.tile, args.overlap)
    band_mean, band_std = [b.mean for b in meta.bands], [b.std for b in meta.bands]
    predictor = Predictor(package.model, device, batch_size=args.batch, tta=args.tta,
                          band_mean=band_mean, band_std=band_std,
                          log=lambda level, message: _log(message))
    # The model package's normalisation, as segment applies it to raster windows.
    mean = np.array(band_mean, np.float32)[:, None, None]
    std = np.array(band_std, np.float32)[:, None, None]
    matrix = ConfusionMatrix(meta.num_classes, ignore_index=dataset.ignore_index)
    _log(f"evaluating {meta.arch} on {len(dataset)} images; device {device_name}, "
         f"{predictor.precision}, tiles {tile} px overlapping {overlap} px, TTA {args.tta}")
    for index in _progress(range(len(dataset)), "images"):
        sample = dataset[index]
        image = (np.asarray(sample["image"], np.float32) - mean) / std
        probabilities = predict_array(predictor, image, tile=tile, overlap=overlap)
        reference = np.asarray(sample["mask"])
        if lookup is not None:
            labelled = reference != dataset.ignore_index
            reference = np.where(labelled, lookup[np.where(labelled, reference, 0)],
                                 dataset.ignore_index)
        try:
            matrix.update(probabilities.argmax(axis=0), reference)
        except ConfigError as error:
            raise ConfigError(f"{sample.get('name', index)}: {error}") from None
    return {
        "model": os.fspath(args.model),
        "data": os.fspath(args.data),
        "split": None if Path(args.data).is_dir() else args.split,
        "images": len(dataset),
        "device": device_name,
        "tile": tile,
        "overlap": overlap,
        "tta": args.tta,
        **matrix.to_dict(meta.class_names),
        "majority_baseline": _baseline(matrix, meta.class_names),
    }


def _baseline(matrix: ConfusionMatrix, names: Sequence[str]) -> dict[str, Any]:
    scores = matrix.majority_baseline().to_dict(names)
    majority = max(scores["classes"], key=lambda c: c["predicted_pixels"])["name"]
    return {"class": majority, **{k: scores[k] for k in ("miou", "mf1", "oa", "macc")},
            "iou": {c["name"]: c["iou"] for c in scores["classes"]}}


def _progress(items: Sequence[int], unit: str) -> Iterable[int]:
    """``items`` with a tqdm bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, unit=unit.rstrip("s"), file=sys.stderr, dynamic_ncols=True)


# ------------------------------------------------------------------ a finished map


def _category_names(band: Any) -> dict[int, str]:
    """Class id -> name from a band's category names (empty names skipped)."""
    return {i: n for i, n in enumerate(band.GetCategoryNames() or []) if n and n.strip()}


def _integer_band(dataset: Any, path: str, what: str) -> Any:
    from osgeo import gdal

    if dataset.RasterCount != 1:
        raise InputRasterError(f"{what} {path} has {dataset.RasterCount} bands; a class raster "
                               "has one")
    band = dataset.GetRasterBand(1)
    if band.DataType not in (gdal.GDT_Byte, gdal.GDT_UInt16, gdal.GDT_Int16, gdal.GDT_UInt32,
                             gdal.GDT_Int32):
        raise InputRasterError(f"{what} {path} holds {gdal.GetDataTypeName(band.DataType)} "
                               "values; a class raster holds integer class ids")
    return band


def _unknown_class(source: str, label: str, map_names: Mapping[int, str]) -> ConfigError:
    return ConfigError(
        f"{source}: reference class {label} matches no class of the map "
        f"({', '.join(map_names.values())}); rename it, or leave it out with --ignore-value"
    )


class _NameMatch:
    """Reference class ids -> map class ids through their names."""

    def __init__(self, reference: Mapping[int, str], map_names: Mapping[int, str],
                 source: str) -> None:
        by_name = {_key(name): i for i, name in map_names.items()}
        self.reference = dict(reference)
        self.map_names = map_names
        self.source = source
        self.table = {i: by_name[_key(n)] for i, n in reference.items() if _key(n) in by_name}

    def translate(self, values: np.ndarray) -> np.ndarray:
        """Map ids for ``values``; UNLABELLED stays."""
        keys = np.array(sorted(self.table), np.int64)
        ids = np.array([self.table[k] for k in keys], np.int64)
        labelled = values != UNLABELLED
        present = np.unique(values[labelled])
        missing = present[~np.isin(present, keys)]
        if missing.size:
            value = int(missing[0])
            name = self.reference.get(value)
            raise _unknown_class(self.source, f"{value}" if name is None else
                                 f"{value} ({name!r})", self.map_names)
        out = np.full(values.shape, UNLABELLED, np.int64)
        out[labelled] = ids[np.searchsorted(keys, values[labelled])]
        return out


class _ReferenceRaster:
    """Reference class ids on the map's grid, read a block of rows at a time."""

    def __init__(self, path: str, grid: Any, map_path: str, map_names: Mapping[int, str],
                 ignore: Sequence[int]) -> None:
        from landcover.engine.raster.grid import Grid
        from landcover.engine.raster.source import open_raster

        self.dataset = open_raster(path)
        self.band = _integer_band(self.dataset, path, "reference")
        own = Grid.of(self.dataset)
        if not own.same_grid(grid):
            raise InputRasterError(
                f"reference {path} ({own.width}x{own.height} px) is not on the grid of "
                f"{map_path} ({grid.width}x{grid.height} px, same size, geotransform and CRS "
                f"needed); warp it onto the map's grid first: {_warp_advice(grid, path)}"
            )
        nodata = self.band.GetNoDataValue()
        self.ignore = [*ignore, *([] if nodata is None else [int(nodata)])]
        names = _category_names(self.band)
        self.match = _NameMatch(names, map_names, path) if names and map_names else None

    def read(self, row: int, rows: int, width: int) -> np.ndarray:
        values = self.band.ReadAsArray(0, row, width, rows).astype(np.int64)
        values[np.isin(values, self.ignore)] = UNLABELLED
        return values if self.match is None else self.match.translate(values)


def _warp_advice(grid: Any, path: str) -> str:
    xmin, ymin, xmax, ymax = grid.bounds
    srs = grid.spatial_reference()
    crs = ""
    if srs is not None:
        srs.AutoIdentifyEPSG()
        code = srs.GetAuthorityCode(None)
        crs = f"-t_srs EPSG:{code} " if code else "-t_srs <the map's CRS> "
    return (f"gdalwarp -r near {crs}-te {xmin:.10g} {ymin:.10g} {xmax:.10g} {ymax:.10g} "
            f"-ts {grid.width} {grid.height} {path} reference_on_map.tif")


class _ReferencePolygons:
    """Reference polygons burnt onto the map's grid a block of rows at a time (GDAL
    rasterises each block in memory; a polygon covers the pixels whose centre it holds)."""

    CLASS_FIELD = "_class"

    def __init__(self, path: str, grid: Any, map_names: Mapping[int, str], field: str,
                 layer_name: str | None, ignore: Sequence[int]) -> None:
        from osgeo import gdal, ogr, osr

        gdal.UseExceptions()
        ogr.UseExceptions()
        self.grid = grid
        if not grid.is_georeferenced or not grid.crs_wkt:
            raise InputRasterError("the map has no georeferencing (or no CRS), so reference "
                                   f"polygons {path} cannot be placed on it")
        try:
            source = gdal.OpenEx(path, gdal.OF_VECTOR | gdal.OF_READONLY)
        except RuntimeError as error:
            if not os.path.exists(path):
                raise FileNotFoundError(f"reference {path} does not exist; check the path") \
                    from None
            raise ConfigError(f"reference {path} is neither a raster nor a vector file GDAL "
                              f"can read ({str(error).strip()})") from None
        layer = self._layer(source, path, layer_name)
        definition = layer.GetLayerDefn()
        index = definition.GetFieldIndex(field)
        if index < 0:
            fields = [definition.GetFieldDefn(i).GetName()
                      for i in range(definition.GetFieldCount())]
            raise ConfigError(f"reference {path} layer {layer.GetName()} has no field {field!r}; "
                              f"pass --reference-field with one of: {', '.join(fields)}")
        kind = definition.GetFieldDefn(index).GetType()
        if kind == ogr.OFTString:
            if not map_names:
                raise ConfigError(f"--reference-field {field} holds class names but the map has "
                                  "no class names; use a field of class ids")
            by_name = {_key(n): i for i, n in map_names.items()}
        elif kind not in (ogr.OFTInteger, ogr.OFTInteger64):
            raise ConfigError(f"--reference-field {field} is neither integer class ids nor "
                              "class names")
        target = grid.spatial_reference()
        own = layer.GetSpatialRef()
        transform = None
        if own is not None:
            own.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            if not own.IsSame(target):
                transform = osr.CoordinateTransformation(own, target)
        self.source = ogr.GetDriverByName("Memory").CreateDataSource("")
        self.layer = self.source.CreateLayer("reference", target, ogr.wkbUnknown)
        self.layer.CreateField(ogr.FieldDefn(self.CLASS_FIELD, ogr.OFTInteger))
        self.features = self.skipped = 0
        for feature in layer:
            geometry = feature.GetGeometryRef()
            value = feature.GetField(index)
            if geometry is None or value is None or (kind != ogr.OFTString and value in ignore):
                self.skipped += 1
                continue
            if kind == ogr.OFTString:
                if _key(value) not in by_name:
                    raise _unknown_class(path, repr(value), map_names)
                value = by_name[_key(value)]
            geometry = geometry.Clone()
            if transform is not None:
                geometry.Transform(transform)
            copy = ogr.Feature(self.layer.GetLayerDefn())
            copy.SetGeometry(geometry)
            copy.SetField(self.CLASS_FIELD, int(value))
            self.layer.CreateFeature(copy)
            self.features += 1

    @staticmethod
    def _layer(source: Any, path: str, name: str | None) -> Any:
        names = [source.GetLayer(i).GetName() for i in range(source.GetLayerCount())]
        if name is not None:
            if name not in names:
                raise ConfigError(f"reference {path} has no layer {name!r}; its layers: "
                                  f"{', '.join(names)}")
            return source.GetLayerByName(name)
        if len(names) != 1:
            raise ConfigError(f"reference {path} has {len(names)} layers ({', '.join(names)}); "
                              "pick one with --reference-layer")
        return source.GetLayer(0)

    def read(self, row: int, rows: int, width: int) -> np.ndarray:
        from osgeo import gdal

        x0, dx, rx, y0, ry, dy = self.grid.transform
        block = gdal.GetDriverByName("MEM").Create("", width, rows, 1, gdal.GDT_Int32)
        block.SetGeoTransform((x0 + row * rx, dx, rx, y0 + row * dy, ry, dy))
        block.SetProjection(self.grid.crs_wkt)
        band = block.GetRasterBand(1)
        band.Fill(UNLABELLED)
        if not self.grid.is_rotated:  # only polygons that reach the block
            xs, ys = (x0, x0 + width * dx), (y0 + row * dy, y0 + (row + rows) * dy)
            self.layer.SetSpatialFilterRect(min(xs), min(ys), max(xs), max(ys))
        gdal.RasterizeLayer(block, [1], self.layer, options=[f"ATTRIBUTE={self.CLASS_FIELD}"])
        self.layer.SetSpatialFilter(None)
        return band.ReadAsArray().astype(np.int64)


def _is_vector(path: str) -> bool:
    from osgeo import gdal

    gdal.UseExceptions()
    try:
        gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
    except RuntimeError:
        return os.path.exists(path)
    return False


def _assess_map(args: argparse.Namespace) -> dict[str, Any]:
    from landcover.engine.metrics import ConfusionMatrix
    from landcover.engine.raster.grid import Grid
    from landcover.engine.raster.source import open_raster

    map_path, reference_path = os.fspath(args.map), os.fspath(args.reference)
    dataset = open_raster(map_path)
    band = _integer_band(dataset, map_path, "map")
    grid = Grid.of(dataset)
    map_names = _category_names(band)
    map_nodata = band.GetNoDataValue()
    if _is_vector(reference_path):
        reference: Any = _ReferencePolygons(reference_path, grid, map_names,
                                            args.reference_field, args.reference_layer,
                                            args.ignore_value)
    else:
        reference = _ReferenceRaster(reference_path, grid, map_path, map_names,
                                     args.ignore_value)
    classes = max(map_names) + 1 if map_names else MAX_MAP_CLASSES
    matrix = ConfusionMatrix(classes, ignore_index=UNLABELLED)
    unmapped = 0
    rows = max(1, BLOCK_PIXELS // grid.width)
    for row in range(0, grid.height, rows):
        count = min(rows, grid.height - row)
        truth = reference.read(row, count, grid.width)
        predicted = band.ReadAsArray(0, row, grid.width, count).astype(np.int64)
        if map_nodata is not None:
            no_value = predicted == int(map_nodata)
            unmapped += int((no_value & (truth != UNLABELLED)).sum())
            truth[no_value] = UNLABELLED
        try:
            matrix.update(predicted, truth)
        except ConfigError as error:
            raise ConfigError(f"{map_path} against {reference_path}: {error}") from None
    if not map_names:  # ids without names: as many classes as the highest id seen
        seen = np.flatnonzero(matrix.reference_counts + matrix.predicted_counts)
        classes = int(seen[-1]) + 1 if seen.size else 1
        trimmed = ConfusionMatrix(classes, ignore_index=UNLABELLED)
        trimmed.matrix = matrix.matrix[:classes, :classes].copy()
        matrix = trimmed
    if matrix.total == 0:
        raise ConfigError(f"{reference_path} labels no pixel that {map_path} maps; check that "
                          "they cover the same ground")
    names = [map_names.get(i, f"class {i}") for i in range(classes)]
    result = {"map": map_path, "reference": reference_path}
    if isinstance(reference, _ReferencePolygons):
        result.update(reference_field=args.reference_field, polygons=reference.features,
                      polygons_skipped=reference.skipped)
    document = matrix.to_dict(names)
    del document["ignore_index"]
    return {**result, "unmapped_reference_pixels": unmapped, **document}


# ------------------------------------------------------------------ report


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def format_result(result: Mapping[str, Any]) -> str:
    """The scores as a table (percent), the means, and the confusion matrix."""
    classes = result["classes"]
    width = max(len("class"), *(len(c["name"]) for c in classes))
    header = f"{'class':<{width}}  {'IoU':>7}  {'F1':>7}  {'acc':>7}  {'prec':>7}  " \
             f"{'ref pixels':>12}"
    lines = [header]
    for c in classes:
        lines.append(
            f"{c['name']:<{width}}  {_percent(c['iou']):>7}  {_percent(c['f1']):>7}  "
            f"{_percent(c['accuracy']):>7}  {_percent(c['precision']):>7}  "
            f"{c['reference_pixels']:>12,}"
        )
    lines.append(
        f"mIoU {_percent(result['miou'])}  mF1 {_percent(result['mf1'])}  "
        f"OA {_percent(result['oa'])}  mAcc {_percent(result['macc'])}  "
        f"({result['pixels']:,} pixels scored; '-': class absent, left out of the means)"
    )
    baseline = result.get("majority_baseline")
    if baseline:
        lines.append(
            f"majority-class baseline (always {baseline['class']!r}): mIoU "
            f"{_percent(baseline['miou'])}  mF1 {_percent(baseline['mf1'])}  "
            f"OA {_percent(baseline['oa'])}  mAcc {_percent(baseline['macc'])}"
        )
    if result.get("unmapped_reference_pixels"):
        lines.append(f"{result['unmapped_reference_pixels']:,} reference pixels fall on the "
                     "map's nodata and are not scored")
    matrix = result["confusion_matrix"]
    cell = max(7, *(len(f"{v:,}") for row in matrix for v in row))
    lines.append("")
    lines.append("confusion matrix (rows: reference, columns: prediction; pixels)")
    lines.append(f"{'':<{width}}  " + "  ".join(f"{i:>{cell}}" for i in range(len(matrix))))
    for c, row in zip(classes, matrix, strict=True):
        lines.append(f"{c['name']:<{width}}  " + "  ".join(f"{v:>{cell},}" for v in row))
    lines.append("columns are class ids: " + ", ".join(f"{c['id']} {c['name']}" for c in classes))
    return "\n".join(lines)
