"""Windows of one georeferenced image, labelled by a label raster or by polygons.

Config (``data:``)::

    layout: raster
    root: path/to/folder       # optional: image, labels and polygons are relative to it
    image: scene.tif           # any GDAL raster with a north-up geotransform
    labels: classes.tif        # a label raster (class values), any grid and CRS: read
                               #   through a nearest-neighbour warped VRT on the image grid
    polygons: reference.gpkg   # or label polygons (any OGR source), rasterised per window
    layer: null                # polygons: layer name (default: the first)
    class_field: class         # polygons: attribute with class ids (0..K-1) or class names
    classes: [{name: water, color: [0, 0, 255]}, ...]   # class id = position (required)
    mask_offset: 0             # labels: class id = value - offset
    ignore_values: []          # labels: raw values without a class (its nodata is ignored)
    nodata: null               # image no-data value (default: the bands' own); such
                               #   pixels are ignored in the mask
    bands: null                # [{name, mean, std}, ...]; default: per-band mean/std of the image
    window_size: 256           # pixels
    train_windows: null        # windows per epoch (default: image area / window area)
    seed: 0                    # train window positions come from (seed, index)
    min_labelled: 0.01         # train windows need this fraction of labelled pixels
    val_region: [xmin, ymin, xmax, ymax]   # map coordinates (image CRS), held out
    test_region: null          # default: val_region
    eval_stride: null          # val/test grid step (default: window_size)

Train windows are drawn at random positions that never overlap the val or test region;
each index always gives the same window (a generator seeded with ``(seed, index)``
redraws, up to 100 times, windows that touch a held-out region or have too few labelled
pixels), so runs are reproducible without global randomness. Val and test windows tile
their region on a regular grid. Outside the polygons (or the label raster) the mask is
ignored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal, ogr, osr

from landcover.engine.errors import ConfigError
from landcover.engine.modelfile import BandInfo
from landcover.training.datasets.base import (
    IGNORE_INDEX,
    Sample,
    SegmentationDataset,
    bands_from_config,
    classes_from_config,
    index_mask,
    window_starts,
)

gdal.UseExceptions()
ogr.UseExceptions()

MAX_DRAWS = 100
# Band statistics are taken from a decimated read of at most this many pixels a side.
STATS_SIZE = 1024
CLASS_ID_FIELD = "class_id"

Box = tuple[int, int, int, int]  # x, y, width, height in image pixels


class RasterWindows(SegmentationDataset):
    """Fixed-size windows of one image; masks from a label raster or polygons."""

    def __init__(self, cfg: Mapping[str, Any], split: str) -> None:
        root = Path(cfg["root"]) if cfg.get("root") else None
        if root is not None and not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}; check data.root")
        self.image_path = _path(root, cfg.get("image"), "image", required=True)
        self.labels_path = _path(root, cfg.get("labels"), "labels")
        self.polygons_path = _path(root, cfg.get("polygons"), "polygons")
        if (self.labels_path is None) == (self.polygons_path is None):
            raise ConfigError(
                "config: layout 'raster' needs exactly one of data.labels (a label raster) "
                "and data.polygons (label polygons)"
            )
        self.classes = classes_from_config(cfg.get("classes"), "data.classes")
        self.ignore_index = int(cfg.get("ignore_index", IGNORE_INDEX))
        self.layer_name = cfg.get("layer")
        self.class_field = str(cfg.get("class_field", "class"))
        self.mask_offset = int(cfg.get("mask_offset", 0))
        self.ignore_values = [int(v) for v in cfg.get("ignore_values", ())]
        self.nodata = cfg.get("nodata")
        self.window = int(cfg.get("window_size", 256))
        if self.window < 1:
            raise ConfigError(f"config: data.window_size {self.window} must be positive")
        self.seed = int(cfg.get("seed", 0))
        self.min_labelled = float(cfg.get("min_labelled", 0.01))
        self._handles: dict[str, Any] = {}

        image = self._image()
        self.width, self.height = image.RasterXSize, image.RasterYSize
        self.geotransform = image.GetGeoTransform()
        if self.geotransform[2] or self.geotransform[4]:
            raise ConfigError(f"{self.image_path.name}: rotated rasters are not supported")
        bands = cfg.get("bands")
        self.bands = (
            self._band_statistics(image) if bands is None
            else bands_from_config(bands, "data.bands")
        )
        if len(self.bands) != image.RasterCount:
            raise ConfigError(
                f"{self.image_path.name} has {image.RasterCount} bands, the config's "
                f"data.bands lists {len(self.bands)}"
            )
        self._label_source()  # opens (and so checks) the labels now

        val = cfg.get("val_region")
        test = cfg.get("test_region", val)
        self.held_out = sorted({
            self._region_box(region, key)
            for region, key in ((val, "val_region"), (test, "test_region"))
            if region is not None
        })
        self.split = split
        if split == "train":
            area = (self.width * self.height) // (self.window * self.window)
            self.count = int(cfg.get("train_windows") or max(1, area))
            if not self._free_positions():
                raise ConfigError(
                    f"config: no {self.window}x{self.window} window of "
                    f"{self.image_path.name} stays clear of the val/test region; shrink "
                    "data.window_size or the region"
                )
            self.boxes: list[Box] = []
        else:
            region = val if split == "val" else test
            if region is None:
                raise ConfigError(
                    f"config: the {split} split of layout 'raster' needs data.val_region "
                    "(a held-out box [xmin, ymin, xmax, ymax] in map coordinates)"
                )
            stride = int(cfg.get("eval_stride") or self.window)
            self.boxes = _grid(self._region_box(region, f"{split}_region"), self.window, stride)
            self.count = len(self.boxes)

    # ------------------------------------------------------------------ sources

    def __getstate__(self) -> dict[str, Any]:
        # GDAL/OGR handles do not pickle: data loader workers reopen them.
        return {**self.__dict__, "_handles": {}}

    def _image(self) -> gdal.Dataset:
        if "image" not in self._handles:
            self._handles["image"] = _open_raster(self.image_path)
        return self._handles["image"]

    def _label_source(self) -> Any:
        if "labels" not in self._handles:
            if self.labels_path is not None:
                self._handles["labels"] = self._warped_labels()
            else:
                self._handles["labels"] = self._polygon_layer()
        return self._handles["labels"]

    def _warped_labels(self) -> gdal.Dataset:
        source = _open_raster(self.labels_path)
        nodata = source.GetRasterBand(1).GetNoDataValue()
        image = self._image()
        x0, y0 = self.geotransform[0], self.geotransform[3]
        x1 = x0 + self.width * self.geotransform[1]
        y1 = y0 + self.height * self.geotransform[5]
        # Nearest-neighbour onto the image grid (an exact copy when the grids agree);
        # outside the label raster and at its nodata the value becomes the ignore index.
        return gdal.Warp(
            "", source, format="VRT", dstSRS=image.GetProjection(),
            outputBounds=(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)),
            width=self.width, height=self.height, resampleAlg="near",
            srcNodata=nodata, dstNodata=self.ignore_index,
        )

    def _polygon_layer(self) -> tuple[Any, Any]:
        """The polygons in the image CRS with an integer class id, in memory."""
        try:
            vector = ogr.Open(os.fspath(self.polygons_path))
        except RuntimeError as error:
            raise ConfigError(
                f"{self.polygons_path}: not a readable vector source ({str(error).strip()})"
            ) from None
        if vector is None:
            raise ConfigError(f"{self.polygons_path}: not a readable vector source")
        layer = (
            vector.GetLayerByName(self.layer_name) if self.layer_name else vector.GetLayer(0)
        )
        if layer is None:
            raise ConfigError(f"config: data.layer {self.layer_name!r} not in {self.polygons_path}")
        definition = layer.GetLayerDefn()
        fields = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
        if self.class_field not in fields:
            raise ConfigError(
                f"config: data.class_field {self.class_field!r} is not a field of "
                f"{self.polygons_path.name} (fields: {', '.join(fields)})"
            )
        target = osr.SpatialReference(wkt=self._image().GetProjection())
        target.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        source_srs = layer.GetSpatialRef()
        transform = None
        if source_srs is not None and not source_srs.IsSame(target):
            source_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            transform = osr.CoordinateTransformation(source_srs, target)
        memory = ogr.GetDriverByName("Memory").CreateDataSource("")
        out = memory.CreateLayer("labels", target, ogr.wkbUnknown)
        out.CreateField(ogr.FieldDefn(CLASS_ID_FIELD, ogr.OFTInteger))
        names = {c.name: c.id for c in self.classes}
        for feature in layer:
            geometry = feature.GetGeometryRef()
            if geometry is None:
                continue
            geometry = geometry.Clone()
            if transform is not None:
                geometry.Transform(transform)
            copy = ogr.Feature(out.GetLayerDefn())
            copy.SetField(CLASS_ID_FIELD, self._class_id(feature.GetField(self.class_field),
                                                         names))
            copy.SetGeometry(geometry)
            out.CreateFeature(copy)
        return memory, out

    def _class_id(self, value: Any, names: Mapping[str, int]) -> int:
        if isinstance(value, str) and value in names:
            return names[value]
        if isinstance(value, int) and 0 <= value < len(self.classes):
            return value
        raise ConfigError(
            f"{self.polygons_path.name}: {self.class_field} = {value!r} is neither a class "
            f"name ({', '.join(names)}) nor a class id 0..{len(self.classes) - 1}"
        )

    def _band_statistics(self, image: gdal.Dataset) -> tuple[BandInfo, ...]:
        scale = max(self.width, self.height) / STATS_SIZE
        shape = (max(1, round(self.width / max(scale, 1))),
                 max(1, round(self.height / max(scale, 1))))
        data = image.ReadAsArray(buf_xsize=shape[0], buf_ysize=shape[1]).astype(np.float64)
        data = data.reshape(image.RasterCount, -1)
        valid = ~self._nodata_pixels(data)
        if not valid.any():
            raise ConfigError(f"{self.image_path.name}: every pixel is no-data")
        bands = []
        for index, values in enumerate(data, start=1):
            described = image.GetRasterBand(index).GetDescription().strip()
            std = float(values[valid].std())
            bands.append(BandInfo(described or f"band_{index}", float(values[valid].mean()),
                                  std if std > 0 else 1.0))
        return tuple(bands)

    def _nodata_pixels(self, data: np.ndarray) -> np.ndarray:
        """Pixels (over the trailing axes) where any band is no-data or NaN."""
        image = self._image()
        missing = np.isnan(data).any(axis=0)
        for index in range(data.shape[0]):
            value = (
                self.nodata if self.nodata is not None
                else image.GetRasterBand(index + 1).GetNoDataValue()
            )
            if value is not None:
                missing |= data[index] == value
        return missing

    # ------------------------------------------------------------------ windows

    def _region_box(self, region: Any, key: str) -> Box:
        if not isinstance(region, Sequence) or len(region) != 4:
            raise ConfigError(f"config: data.{key} must be [xmin, ymin, xmax, ymax]")
        xmin, ymin, xmax, ymax = (float(v) for v in region)
        gt = self.geotransform
        columns = sorted(((xmin - gt[0]) / gt[1], (xmax - gt[0]) / gt[1]))
        rows = sorted(((ymin - gt[3]) / gt[5], (ymax - gt[3]) / gt[5]))
        x0, x1 = max(0, math.floor(columns[0])), min(self.width, math.ceil(columns[1]))
        y0, y1 = max(0, math.floor(rows[0])), min(self.height, math.ceil(rows[1]))
        if x1 <= x0 or y1 <= y0:
            raise ConfigError(
                f"config: data.{key} {list(region)} does not overlap {self.image_path.name}"
            )
        return x0, y0, x1 - x0, y1 - y0

    def _window_shape(self) -> tuple[int, int]:
        return min(self.window, self.width), min(self.window, self.height)

    def _clear(self, x: int, y: int) -> bool:
        width, height = self._window_shape()
        return not any(
            x < hx + hw and hx < x + width and y < hy + hh and hy < y + height
            for hx, hy, hw, hh in self.held_out
        )

    def _free_positions(self) -> bool:
        width, height = self._window_shape()
        return any(
            self._clear(x, y)
            for y in window_starts(self.height, height, max(1, height // 4))
            for x in window_starts(self.width, width, max(1, width // 4))
        )

    def train_box(self, index: int) -> Box:
        """The window of training sample ``index`` (the same for every call)."""
        width, height = self._window_shape()
        rng = np.random.default_rng([self.seed, index])
        fallback = None
        for _ in range(MAX_DRAWS):
            x = int(rng.integers(0, self.width - width + 1))
            y = int(rng.integers(0, self.height - height + 1))
            if not self._clear(x, y):
                continue
            box = (x, y, width, height)
            fallback = fallback or box
            mask = self._read(box)[1]
            if np.mean(mask != self.ignore_index) >= self.min_labelled:
                return box
        if fallback is None:
            raise ConfigError(
                f"no clear window found for training sample {index} in {MAX_DRAWS} draws; "
                "shrink data.val_region or data.window_size"
            )
        return fallback

    # ------------------------------------------------------------------ reading

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        x, y, width, height = box
        image = self._image().ReadAsArray(x, y, width, height).astype(np.float32)
        if image.ndim == 2:
            image = image[None]
        mask = self._read_mask(box)
        mask[self._nodata_pixels(image)] = self.ignore_index
        return image, mask

    def _read_mask(self, box: Box) -> np.ndarray:
        x, y, width, height = box
        source = self._label_source()
        if self.labels_path is not None:
            values = source.GetRasterBand(1).ReadAsArray(x, y, width, height)
            return index_mask(
                values, len(self.classes), offset=self.mask_offset,
                ignore_values=self.ignore_values, ignore_index=self.ignore_index,
                name=self.labels_path.name,
            ).astype(np.uint8)
        _, layer = source
        gt = self.geotransform
        target = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
        target.SetGeoTransform(
            (gt[0] + x * gt[1], gt[1], 0.0, gt[3] + y * gt[5], 0.0, gt[5])
        )
        target.SetProjection(self._image().GetProjection())
        band = target.GetRasterBand(1)
        band.Fill(self.ignore_index)
        gdal.RasterizeLayer(target, [1], layer, options=[f"ATTRIBUTE={CLASS_ID_FIELD}"])
        return band.ReadAsArray()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.count:
            raise IndexError(index)
        box = self.train_box(index) if self.split == "train" else self.boxes[index]
        image, mask = self._read(box)
        return {"image": image, "mask": mask,
                "name": f"{self.image_path.stem}_{box[0]}_{box[1]}"}


def _path(root: Path | None, value: Any, key: str, *, required: bool = False) -> Path | None:
    if value in (None, ""):
        if required:
            raise ConfigError(f"config: data.{key} is required for layout 'raster'")
        return None
    path = Path(os.path.expanduser(str(value)))
    if root is not None and not path.is_absolute():
        path = root / path
    if not path.exists():
        raise FileNotFoundError(f"{key} not found: {path}; check data.{key}")
    return path


def _open_raster(path: Path) -> gdal.Dataset:
    try:
        return gdal.Open(os.fspath(path))
    except RuntimeError as error:
        raise ConfigError(f"{path}: not a readable raster ({str(error).strip()})") from None


def _grid(region: Box, window: int, stride: int) -> list[Box]:
    x0, y0, width, height = region
    size_x, size_y = min(window, width), min(window, height)
    return [
        (x0 + x, y0 + y, size_x, size_y)
        for y in window_starts(height, size_y, stride)
        for x in window_starts(width, size_x, stride)
    ]
