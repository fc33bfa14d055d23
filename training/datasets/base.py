"""The dataset contract every layout keeps, and the readers and label decoders they share.

A sample is a dict: ``image`` float32 ``(C, H, W)`` of raw values (normalisation happens
later, from ``bands``), ``mask`` integer ``(H, W)`` (uint8 or int64) of class ids with
``ignore_index`` for pixels without a label, and ``name``. Datasets draw no random
numbers: augmentation is applied on top by the data module, seeded per sample, so runs
resume exactly.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal
from torch.utils.data import Dataset

from landcover.engine.errors import ConfigError
from landcover.engine.modelfile import BandInfo, ClassInfo, ModalityInfo
from landcover.engine.presets import IMAGENET_MEAN, IMAGENET_STD

gdal.UseExceptions()

IGNORE_INDEX = 255
Sample = dict[str, Any]


class SegmentationDataset(Dataset, ABC):
    """Base class: subclasses set the attributes below and implement ``__len__`` and
    ``__getitem__`` returning a :data:`Sample`."""

    classes: tuple[ClassInfo, ...]
    bands: tuple[BandInfo, ...]
    modalities: tuple[ModalityInfo, ...] = ()
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample: ...


def read_raster(
    path: str | os.PathLike[str], dtype: type = np.float32, *, expand_palette: bool = False
) -> np.ndarray:
    """All bands of a GDAL-readable file (PNG, JPEG, GeoTIFF ...) as ``(C, H, W)``;
    with ``expand_palette`` a one-band paletted file comes back as its RGB colours."""
    try:
        dataset = gdal.Open(os.fspath(path))
        data = np.asarray(dataset.ReadAsArray())
        table = dataset.GetRasterBand(1).GetColorTable() if dataset.RasterCount == 1 else None
        # Copy the colours now: the table belongs to the dataset closed below.
        palette = None if table is None else np.array(
            [table.GetColorEntry(i)[:3] for i in range(table.GetCount())], dtype=np.uint8
        )
    except RuntimeError as error:
        raise ConfigError(f"{path}: not a readable image ({str(error).strip()})") from None
    finally:
        dataset = None
    if data.ndim == 2:
        data = data[None]
    if expand_palette and palette is not None:
        data = palette[data[0].clip(max=len(palette) - 1)].transpose(2, 0, 1)
    return data.astype(dtype, copy=False)


def classes_from_config(entries: Any, where: str) -> tuple[ClassInfo, ...]:
    """``[{name, color}, ...]`` (class id = position) as ClassInfo."""
    if not isinstance(entries, Sequence) or isinstance(entries, str) or len(entries) < 2:
        raise ConfigError(f"config: {where} must list at least 2 classes as {{name, color}}")
    classes = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or {"name", "color"} - set(entry):
            raise ConfigError(f"config: {where}[{index}] needs a name and a color [r, g, b]")
        classes.append(ClassInfo(index, entry["name"], tuple(entry["color"])))
    return tuple(classes)


def bands_from_config(entries: Any, where: str) -> tuple[BandInfo, ...]:
    """``"rgb"`` (ImageNet statistics in 0..255 units) or ``[{name, mean, std,
    wavelength_um?}, ...]`` as BandInfo."""
    if entries == "rgb":
        return tuple(
            BandInfo(name, mean, std, wavelength)
            for name, mean, std, wavelength in zip(
                ("red", "green", "blue"), IMAGENET_MEAN, IMAGENET_STD, (0.665, 0.56, 0.49),
                strict=True,
            )
        )
    if not isinstance(entries, Sequence) or isinstance(entries, str) or not entries:
        raise ConfigError(f"config: {where} must be 'rgb' or a list of {{name, mean, std}}")
    bands = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or {"name", "mean", "std"} - set(entry):
            raise ConfigError(f"config: {where}[{index}] needs name, mean and std")
        bands.append(
            BandInfo(entry["name"], float(entry["mean"]), float(entry["std"]),
                     entry.get("wavelength_um"))
        )
    return tuple(bands)


class ColorDecoder:
    """RGB-coded label images -> class ids: each class's colour maps to its id, the
    ``ignore`` colours to the ignore index; any other colour is an error that names it."""

    def __init__(
        self,
        classes: Sequence[ClassInfo],
        ignore_colors: Sequence[Sequence[int]] = (),
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        codes = {_pack(c.color): c.id for c in classes}
        for color in ignore_colors:
            codes.setdefault(_pack(color), ignore_index)
        self._codes = np.array(sorted(codes), dtype=np.int64)
        self._ids = np.array([codes[code] for code in self._codes], dtype=np.int64)

    def __call__(self, rgb: np.ndarray, name: str = "mask") -> np.ndarray:
        if rgb.ndim != 3 or rgb.shape[0] < 3:
            raise ConfigError(f"{name}: an RGB-coded mask needs 3 bands, it has {rgb.shape[0]}")
        rgb = rgb[:3].astype(np.int64)
        packed = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
        position = np.searchsorted(self._codes, packed).clip(max=len(self._codes) - 1)
        unknown = self._codes[position] != packed
        if unknown.any():
            code = int(packed[unknown][0])
            color = (code >> 16, (code >> 8) & 255, code & 255)
            raise ConfigError(
                f"{name}: colour {color} is neither a class colour nor an ignored colour; "
                "add it to the config's classes or ignore_colors"
            )
        return self._ids[position]


def _pack(color: Sequence[int]) -> int:
    if len(color) != 3 or not all(0 <= int(c) <= 255 for c in color):
        raise ConfigError(f"config: colour {list(color)} must be three ints 0..255")
    return (int(color[0]) << 16) | (int(color[1]) << 8) | int(color[2])


def index_mask(
    values: np.ndarray,
    num_classes: int,
    *,
    offset: int = 0,
    ignore_values: Sequence[int] = (),
    ignore_index: int = IGNORE_INDEX,
    name: str = "mask",
) -> np.ndarray:
    """Single-band index labels -> class ids: ``value - offset``; ``ignore_values`` (raw)
    and ``ignore_index`` become the ignore index; a value outside the classes is an error."""
    raw = values[0].astype(np.int64) if values.ndim == 3 else values.astype(np.int64)
    ignored = np.isin(raw, [*ignore_values, ignore_index])
    ids = raw - offset
    bad = ~ignored & ((ids < 0) | (ids >= num_classes))
    if bad.any():
        raise ConfigError(
            f"{name}: label value {int(raw[bad][0])} is not one of the {num_classes} classes "
            f"(values {offset}..{offset + num_classes - 1}); fix the config's classes, "
            "mask_offset or ignore_values"
        )
    ids[ignored] = ignore_index
    return ids


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride``, the last one moved back to end at
    the edge (so every window lies inside); a single start for an axis shorter than the
    window."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def find_pairs(
    image_dir: Path, mask_dir: Path, mask_suffix: str, extensions: Sequence[str]
) -> list[tuple[Path, Path]]:
    """Image files in ``image_dir`` with the mask of the same stem (plus ``mask_suffix``);
    a missing folder, no images or an image without its mask is a one-line error."""
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}; check data.root")
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"mask folder not found: {mask_dir}; check data.root")
    images = sorted(
        p for p in image_dir.iterdir() if p.suffix.lower() in extensions and p.is_file()
    )
    if not images:
        raise FileNotFoundError(
            f"no images ({', '.join(extensions)}) in {image_dir}; check data.root"
        )
    pairs = []
    for image in images:
        mask = mask_dir / f"{image.stem}{mask_suffix}"
        if not mask.is_file():
            raise FileNotFoundError(f"{image.name} has no mask {mask}; check data.mask_suffix")
        pairs.append((image, mask))
    return pairs
