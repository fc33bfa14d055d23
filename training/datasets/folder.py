"""The generic layout for users' own data: a folder of images and a folder of masks.

Config (``data:``)::

    layout: folder
    root: path/to/data
    images: images            # sub-folder; "{split}" is replaced by train/val/test
    masks: masks
    mask_suffix: .png         # mask file = image stem + suffix
    mask_encoding: color      # color (RGB-coded) or index (single-band class values)
    classes: [{name: building, color: [60, 16, 152]}, ...]   # class id = position
    ignore_colors: [[155, 155, 155]]   # color masks: colours without a class
    mask_offset: 0            # index masks: class id = value - offset
    ignore_values: []         # index masks: raw values without a class
    bands: rgb                # or [{name, mean, std, wavelength_um?}, ...]
    cache_images: true        # keep decoded images in memory
    holdout: "tile3_*"        # without {split}: images matching this glob are val/test

Images and masks are any GDAL-readable files (PNG, JPEG, GeoTIFF). Every mask is decoded
once when the dataset is built, so a colour or value outside the classes fails at start.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal

from landcover.engine.errors import ConfigError
from landcover.training.datasets.base import (
    IGNORE_INDEX,
    ColorDecoder,
    Sample,
    SegmentationDataset,
    bands_from_config,
    classes_from_config,
    find_pairs,
    index_mask,
    read_raster,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class ImageMaskFolder(SegmentationDataset):
    """Image/mask pairs; masks are decoded to uint8 class ids (and checked) on construction."""

    def __init__(self, cfg: Mapping[str, Any], split: str) -> None:
        root = Path(_required(cfg, "root"))
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}; check data.root")
        self.classes = classes_from_config(_required(cfg, "classes"), "data.classes")
        self.bands = bands_from_config(cfg.get("bands", "rgb"), "data.bands")
        self.ignore_index = int(cfg.get("ignore_index", IGNORE_INDEX))
        image_folder = str(cfg.get("images", "images"))
        mask_folder = str(cfg.get("masks", "masks"))
        pairs = find_pairs(
            root / image_folder.format(split=split),
            root / mask_folder.format(split=split),
            str(cfg.get("mask_suffix", ".png")),
            IMAGE_EXTENSIONS,
        )
        if "{split}" not in image_folder:
            pairs = _holdout_split(pairs, cfg.get("holdout"), split)
        encoding = cfg.get("mask_encoding", "color")
        if encoding == "color":
            decode = ColorDecoder(
                self.classes, cfg.get("ignore_colors", ()), self.ignore_index
            )
            self._decode = decode
            self._palette = True
        elif encoding == "index":
            self._palette = False
            offset = int(cfg.get("mask_offset", 0))
            ignore_values = [int(v) for v in cfg.get("ignore_values", ())]
            self._decode = lambda values, name: index_mask(
                values, len(self.classes), offset=offset, ignore_values=ignore_values,
                ignore_index=self.ignore_index, name=name,
            )
        else:
            raise ConfigError(f"config: data.mask_encoding {encoding!r}: use color or index")
        self.images = [image for image, _ in pairs]
        # Decoded images stay in memory (JPEG/PNG decoding would dominate a CPU epoch).
        self._cache_images = bool(cfg.get("cache_images", True))
        self._cache: dict[int, np.ndarray] = {}
        self.mask_paths = [mask for _, mask in pairs]
        # Every mask is decoded now, so a label outside the classes fails at start; the
        # decoded masks are kept only with cache_images (LoveDA's would take gigabytes).
        decoded = [self._read_mask(image, mask) for image, mask in pairs]
        self._masks = decoded if self._cache_images else None

    def _read_mask(self, image: Path, mask: Path) -> np.ndarray:
        values = read_raster(mask, np.uint8, expand_palette=self._palette)
        ids = self._decode(values, mask.name).astype(np.uint8)
        height, width = read_shape(image)
        if ids.shape != (height, width):
            raise ConfigError(
                f"{mask.name} is {ids.shape[1]}x{ids.shape[0]} but its image is "
                f"{width}x{height}; masks must match their images"
            )
        return ids

    def __len__(self) -> int:
        return len(self.images)

    def mask(self, index: int) -> np.ndarray:
        """The class ids (uint8) of sample ``index``."""
        if self._masks is not None:
            return self._masks[index]
        return self._read_mask(self.images[index], self.mask_paths[index])

    def _read_image(self, index: int) -> np.ndarray:
        cached = self._cache.get(index)
        if cached is None:
            cached = read_raster(self.images[index], np.float32)
            if self._cache_images:
                self._cache[index] = cached
        return cached

    def __getitem__(self, index: int) -> Sample:
        image = self._read_image(index)
        if image.shape[0] != len(self.bands):
            raise ConfigError(
                f"{self.images[index].name} has {image.shape[0]} bands, the config's data.bands "
                f"lists {len(self.bands)}"
            )
        return {
            "image": image,
            "mask": self.mask(index),
            "name": self.images[index].stem,
        }


def read_shape(path: Path) -> tuple[int, int]:
    dataset = gdal.Open(str(path))
    return dataset.RasterYSize, dataset.RasterXSize


def _required(cfg: Mapping[str, Any], key: str) -> Any:
    if cfg.get(key) in (None, ""):
        raise ConfigError(f"config: data.{key} is required for layout {cfg.get('layout')!r}")
    return cfg[key]


def _holdout_split(pairs: list, pattern: Any, split: str) -> list:
    if pattern is None:
        if split == "train":
            return pairs
        raise ConfigError(
            "config: data.holdout (a file-name glob) or a {split} folder is needed for a "
            f"{split} split"
        )
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    held = [
        pair for pair in pairs if any(fnmatch.fnmatch(pair[0].stem, p) for p in patterns)
    ]
    if not held:
        raise ConfigError(f"config: data.holdout {pattern!r} matches no image")
    if len(held) == len(pairs):
        raise ConfigError(f"config: data.holdout {pattern!r} matches every image")
    return [pair for pair in pairs if pair not in held] if split == "train" else held
