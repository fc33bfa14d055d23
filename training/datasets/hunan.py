"""The Hunan multi-modal set in AMM-FuseNet's layout: Sentinel-2, Sentinel-1 and SRTM
patches with land-cover labels.

As the public AMM-FuseNet code reads it (oktaykarakus/ReSIF, ``AMM-FuseNet/datasets/
Hunan_dual.py`` and ``Hunan3.py``)::

    ROOT/s2_dir/{train,val,test}/*_s2_*.tif     # Sentinel-2, 13 bands
    ROOT/s1_dir/{train,val,test}/*_s1_*.tif     # Sentinel-1 VV, VH
    ROOT/dem_dir/{train,val,test}/*_topo_*.tif  # SRTM; band 1 (elevation) is used
    ROOT/ann_dir/{train,val,test}/*_lc_*.tif    # labels, raw codes (see label_map)

The files of one sample differ only in that token (``s2``, ``s1``, ``topo``, ``lc``).

Config (``data:``)::

    layout: hunan
    root: path/to/Hunan
    modalities: [s2, s1]     # which of s2, s1, dem are stacked, in this order
    folders: {s2: s2_dir, s1: s1_dir, dem: dem_dir, labels: ann_dir}
    name_tokens: {s2: s2, s1: s1, dem: topo, labels: lc}
    classes: ...             # default: the 7 Hunan classes below
    label_map: {1: 0, 2: 1, 3: 2, 4: 1, 5: 3, 6: 4, 7: 6, 8: 6, 9: 5, 10: 6}
                             # raw label value -> class id (null: values are class ids)
    ignore_values: [0, 255]  # raw values without a class
    bands: null              # [{name, mean: min, std: max - min}, ...] over the stacked
                             # bands; default: per-band min and max over the train split
    cache_images: false

Classes (ids 0..6): cropland, forest, grassland, wetland, water, unused land, built-up,
with AMM-FuseNet's colours. The default ``label_map`` is AMM-FuseNet's ``igbp2hunan``
table, except raw 11: that table sends it to an 8th id, which no 7-class model can take,
so here it is an error if it occurs. Normalisation is per-band min-max, fixed from the
train split (AMM-FuseNet rescales each patch by its own min and max instead).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from landcover.engine.errors import ConfigError
from landcover.engine.modelfile import BandInfo, ModalityInfo
from landcover.training.datasets.base import (
    IGNORE_INDEX,
    Sample,
    SegmentationDataset,
    bands_from_config,
    classes_from_config,
    read_raster,
)

CLASSES = [
    {"name": "cropland", "color": [197, 90, 17]},
    {"name": "forest", "color": [51, 130, 88]},
    {"name": "grassland", "color": [178, 206, 61]},
    {"name": "wetland", "color": [229, 84, 96]},
    {"name": "water", "color": [91, 155, 215]},
    {"name": "unused land", "color": [240, 160, 2]},
    {"name": "built-up", "color": [226, 175, 110]},
]
LABEL_MAP = {1: 0, 2: 1, 3: 2, 4: 1, 5: 3, 6: 4, 7: 6, 8: 6, 9: 5, 10: 6}
IGNORE_VALUES = (0, 255)
FOLDERS = {"s2": "s2_dir", "s1": "s1_dir", "dem": "dem_dir", "labels": "ann_dir"}
NAME_TOKENS = {"s2": "s2", "s1": "s1", "dem": "topo", "labels": "lc"}
# Band names and central wavelengths (micrometres) of each modality.
MODALITY_BANDS: dict[str, tuple[tuple[str, float | None], ...]] = {
    "s2": (("B1", 0.443), ("B2", 0.49), ("B3", 0.56), ("B4", 0.665), ("B5", 0.705),
           ("B6", 0.74), ("B7", 0.783), ("B8", 0.842), ("B8A", 0.865), ("B9", 0.945),
           ("B10", 1.375), ("B11", 1.61), ("B12", 2.19)),
    "s1": (("VV", None), ("VH", None)),
    "dem": (("elevation", None),),
}
DEFAULT_MODALITIES = ("s2", "s1")


class Hunan(SegmentationDataset):
    """Stacked modalities of one split; masks decoded when the dataset is built."""

    def __init__(self, cfg: Mapping[str, Any], split: str) -> None:
        if cfg.get("root") in (None, ""):
            raise ConfigError("config: data.root is required for layout 'hunan'")
        self.root = Path(cfg["root"])
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}; check data.root")
        names = cfg.get("modalities", DEFAULT_MODALITIES)
        names = [names] if isinstance(names, str) else list(names)
        unknown = [m for m in names if m not in MODALITY_BANDS]
        if unknown or not names or len(set(names)) != len(names):
            raise ConfigError(
                f"config: data.modalities {names!r}: list some of s2, s1, dem once each"
            )
        self.modality_names = names
        self.folders = {**FOLDERS, **dict(cfg.get("folders") or {})}
        self.tokens = {**NAME_TOKENS, **dict(cfg.get("name_tokens") or {})}
        self.classes = classes_from_config(cfg.get("classes") or CLASSES, "data.classes")
        self.ignore_index = int(cfg.get("ignore_index", IGNORE_INDEX))
        self.modalities = tuple(
            ModalityInfo(name, [band for band, _ in MODALITY_BANDS[name]]) for name in names
        )
        self._lookup = self._label_lookup(
            cfg.get("label_map", LABEL_MAP), cfg.get("ignore_values", IGNORE_VALUES)
        )
        self.samples = self._samples(split)
        self._cache_images = bool(cfg.get("cache_images", False))
        self._cache: dict[int, np.ndarray] = {}
        self.masks = [self._read_mask(sample["labels"]) for sample in self.samples]
        bands = cfg.get("bands")
        self.bands = (
            self._train_min_max(split) if bands is None else bands_from_config(bands, "data.bands")
        )
        channels = sum(len(m.bands) for m in self.modalities)
        if len(self.bands) != channels:
            raise ConfigError(
                f"config: data.bands lists {len(self.bands)} bands; modalities "
                f"{', '.join(names)} have {channels}"
            )

    # ------------------------------------------------------------------ files

    def _samples(self, split: str) -> list[dict[str, Path]]:
        label_dir = self.root / self.folders["labels"] / split
        if not label_dir.is_dir():
            raise FileNotFoundError(f"label folder not found: {label_dir}; check data.root")
        labels = sorted(p for p in label_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
        if not labels:
            raise FileNotFoundError(f"no label GeoTIFFs in {label_dir}; check data.root")
        pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(self.tokens['labels'])}(?![A-Za-z0-9])")
        samples = []
        for label in labels:
            if not pattern.search(label.name):
                raise ConfigError(
                    f"{label.name}: the label file name lacks the token "
                    f"{self.tokens['labels']!r}; set data.name_tokens.labels"
                )
            sample = {"labels": label}
            for name in self.modality_names:
                path = (
                    self.root / self.folders[name] / split
                    / pattern.sub(self.tokens[name], label.name)
                )
                if not path.is_file():
                    raise FileNotFoundError(f"{label.name} has no {name} file {path}")
                sample[name] = path
            samples.append(sample)
        return samples

    def _label_lookup(self, label_map: Any, ignore_values: Any) -> np.ndarray:
        """Raw value (0..255) -> class id, the ignore index, or -1 (an error)."""
        lookup = np.full(256, -1, dtype=np.int64)
        if label_map is None:
            lookup[: len(self.classes)] = np.arange(len(self.classes))
        elif isinstance(label_map, Mapping):
            for raw, class_id in label_map.items():
                if not 0 <= int(raw) <= 255 or not 0 <= int(class_id) < len(self.classes):
                    raise ConfigError(
                        f"config: data.label_map {raw}: {class_id} must map a value 0..255 "
                        f"to a class id 0..{len(self.classes) - 1}"
                    )
                lookup[int(raw)] = int(class_id)
        else:
            raise ConfigError("config: data.label_map must map raw values to class ids, or be null")
        for raw in [*ignore_values, self.ignore_index]:
            lookup[int(raw)] = self.ignore_index
        return lookup

    def _read_mask(self, path: Path) -> np.ndarray:
        values = read_raster(path, np.int64)[0]
        if values.min() < 0 or values.max() > 255:
            raise ConfigError(f"{path.name}: label values must be 0..255")
        ids = self._lookup[values]
        if (ids < 0).any():
            raw = int(values[ids < 0][0])
            raise ConfigError(
                f"{path.name}: label value {raw} is not one of the {len(self.classes)} "
                "classes; fix data.label_map or data.ignore_values"
            )
        return ids.astype(np.uint8)

    def _stack(self, sample: Mapping[str, Path]) -> np.ndarray:
        """The chosen modalities of one sample, concatenated along the bands."""
        parts = []
        for modality in self.modalities:
            path = sample[modality.name]
            data = read_raster(path, np.float32)
            if modality.name == "dem":
                data = data[:1]  # elevation; further bands (slope ...) are not used
            if data.shape[0] != len(modality.bands):
                raise ConfigError(
                    f"{path.name} has {data.shape[0]} bands; {modality.name} needs "
                    f"{len(modality.bands)} ({', '.join(modality.bands)})"
                )
            if parts and data.shape[1:] != parts[0].shape[1:]:
                raise ConfigError(
                    f"{path.name} is {data.shape[2]}x{data.shape[1]}, the other modalities "
                    f"of its sample {parts[0].shape[2]}x{parts[0].shape[1]}"
                )
            parts.append(data)
        return np.concatenate(parts)

    def _read_image(self, index: int) -> np.ndarray:
        image = self._cache.get(index)
        if image is None:
            image = self._stack(self.samples[index])
            if image.shape[1:] != self.masks[index].shape:
                raise ConfigError(
                    f"{self.samples[index]['labels'].name}: the label is not the size of "
                    "its images"
                )
            if self._cache_images:
                self._cache[index] = image
        return image

    def _train_min_max(self, split: str) -> tuple[BandInfo, ...]:
        """Per-band min-max normalisation (mean = min, std = max - min) over the train
        split, whichever split this is, so that every split normalises alike."""
        samples = self.samples if split == "train" else self._samples("train")
        low = np.full(sum(len(m.bands) for m in self.modalities), np.inf)
        high = -low
        for sample in samples:
            flat = self._stack(sample)
            flat = flat.reshape(flat.shape[0], -1)
            low = np.fmin(low, np.nanmin(flat, axis=1))
            high = np.fmax(high, np.nanmax(flat, axis=1))
        names = [
            (band, wavelength)
            for name in self.modality_names for band, wavelength in MODALITY_BANDS[name]
        ]
        return tuple(
            BandInfo(name, float(lo), float(hi - lo) if hi > lo else 1.0, wavelength)
            for (name, wavelength), lo, hi in zip(names, low, high, strict=True)
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return {
            "image": self._read_image(index),
            "mask": self.masks[index],
            "name": self.samples[index]["labels"].stem,
        }
