"""ISPRS Vaihingen and Potsdam: cutting the published tiles into patches, and the layout
that reads them.

The published tiles are large (Vaihingen about 2000 x 2500 px IRRG, Potsdam 6000 x 6000
px RGB/IRRG/RGBIR) with RGB-coded labels: white impervious surfaces, blue building, cyan
low vegetation, green tree, yellow car, red clutter; the eroded ``_noBoundary`` labels
paint object boundaries black (ignored). ``landcover prepare isprs`` runs
:func:`prepare_isprs`, which writes::

    OUT/isprs.json                        # dataset, image kind, bands and tile splits
    OUT/{train,test[,val]}/images/ID_X_Y.png|tif
    OUT/{train,test[,val]}/masks/ID_X_Y.png    # class ids 0..5, 255 ignored (paletted)

Default splits by tile id are the common ones (ISPRS benchmark / mmsegmentation's
``tools/dataset_converters/{vaihingen,potsdam}.py``; GeoSeg's README uses the same test
tiles). Evaluation splits (test, val) take their masks from the eroded labels when given,
as the benchmark scores them; train takes the full labels.

Config (``data:``) of the layout::

    layout: isprs
    root: OUT                 # a folder written by `landcover prepare isprs`
    dataset: vaihingen        # default: from OUT/isprs.json
    classes: ...              # default: the six ISPRS classes
    bands: ...                # default: from OUT/isprs.json (the preset's bands)
    cache_images: true

Split val reads ``OUT/val`` when prepared, else ``OUT/test`` (ISPRS defines train and test
only; mmsegmentation and GeoSeg validate on the test tiles). The patches are read by the
folder layout with a config derived from this one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal

from landcover.engine.errors import ConfigError
from landcover.engine.modelfile import BandInfo
from landcover.engine.presets import PRESETS, default_band
from landcover.training.datasets.base import (
    IGNORE_INDEX,
    ColorDecoder,
    window_starts,
)
from landcover.training.datasets.folder import ImageMaskFolder

gdal.UseExceptions()

CLASSES = PRESETS["vaihingen"].classes  # the same six classes and colours for both sets
BOUNDARY_COLOR = (0, 0, 0)
SUMMARY_FILE = "isprs.json"


@dataclass(frozen=True)
class _Naming:
    """How one set names its tiles (the group of each pattern is the tile id)."""

    image: str
    label: str
    eroded_label: str
    kinds: tuple[str, ...]  # image kinds: IRRG (Vaihingen); RGB, IRRG, RGBIR (Potsdam)


NAMING = {
    "vaihingen": _Naming(
        image=r"top_mosaic_09cm_area(\d+)\.tif",
        label=r"top_mosaic_09cm_area(\d+)\.tif",
        eroded_label=r"top_mosaic_09cm_area(\d+)_noBoundary\.tif",
        kinds=("IRRG",),
    ),
    "potsdam": _Naming(
        image=r"top_potsdam_(\d+_\d+)_{kind}\.tif",
        label=r"top_potsdam_(\d+_\d+)_label\.tif",
        eroded_label=r"top_potsdam_(\d+_\d+)_label_noBoundary\.tif",
        kinds=("RGB", "IRRG", "RGBIR"),
    ),
}

# Tile ids of the common splits (see the module docstring for the sources).
DEFAULT_SPLITS: dict[str, dict[str, list[str]]] = {
    "vaihingen": {
        "train": ["1", "3", "5", "7", "11", "13", "15", "17", "21", "23", "26", "28", "30",
                  "32", "34", "37"],
        "test": ["2", "4", "6", "8", "10", "12", "14", "16", "20", "22", "24", "27", "29",
                 "31", "33", "35", "38"],
    },
    "potsdam": {
        # GeoSeg drops 7_10 (label errors) from train and holds 2_10 out for validation.
        "train": ["2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12",
                  "5_10", "5_11", "5_12", "6_7", "6_8", "6_9", "6_10", "6_11", "6_12",
                  "7_7", "7_8", "7_9", "7_10", "7_11", "7_12"],
        "test": ["2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14",
                 "5_15", "6_13", "6_14", "6_15", "7_13"],
    },
}

_BAND_NAMES = {"IRRG": ("nir", "red", "green"), "RGB": ("red", "green", "blue"),
               "RGBIR": ("red", "green", "blue", "nir")}


def default_bands(kind: str) -> tuple[BandInfo, ...]:
    """The presets' bands for IRRG (Vaihingen's) and RGB (Potsdam's); RGBIR adds a NIR band
    with generic statistics."""
    if kind == "IRRG":
        return PRESETS["vaihingen"].bands
    if kind == "RGB":
        return PRESETS["potsdam"].bands
    return tuple(default_band(name) for name in _BAND_NAMES[kind])


def _index_tiles(folder: Path, pattern: str, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    regex = re.compile(pattern, re.IGNORECASE)
    tiles = {}
    for path in sorted(folder.iterdir()):
        match = regex.fullmatch(path.name)
        if match:
            tiles[match.group(1)] = path
    return tiles


def decode_label(rgb: np.ndarray, decoder: ColorDecoder, name: str) -> np.ndarray:
    """RGB label window -> class ids. Channels are snapped to 0/255 first: every ISPRS
    colour (and the black boundary) is made of 0s and 255s, so slightly off values from
    lossy handling still decode, while a genuinely foreign colour still fails."""
    snapped = np.where(rgb[:3] >= 128, 255, 0)
    return decoder(snapped, name).astype(np.uint8)


def _write_mask(path: Path, ids: np.ndarray) -> None:
    memory = gdal.GetDriverByName("MEM").Create("", ids.shape[1], ids.shape[0], 1, gdal.GDT_Byte)
    band = memory.GetRasterBand(1)
    band.WriteArray(ids)
    table = gdal.ColorTable()
    for cls in CLASSES:
        table.SetColorEntry(cls.id, (*cls.color, 255))
    table.SetColorEntry(IGNORE_INDEX, (*BOUNDARY_COLOR, 255))
    band.SetRasterColorTable(table)
    gdal.GetDriverByName("PNG").CreateCopy(str(path), memory)


def prepare_isprs(
    dataset: str,
    images: Path,
    labels: Path,
    out: Path,
    *,
    eroded_labels: Path | None = None,
    patch: int = 512,
    stride: int = 512,
    splits: Mapping[str, Sequence[str]] | None = None,
    image_kind: str | None = None,
    image_format: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Cut the tiles of ``dataset`` (vaihingen or potsdam) into patches under ``out``;
    returns (and writes to ``out/isprs.json``) what was made."""
    if dataset not in NAMING:
        raise ConfigError(f"--dataset {dataset!r}: use vaihingen or potsdam")
    naming = NAMING[dataset]
    kind = (image_kind or naming.kinds[0]).upper()
    if kind not in naming.kinds:
        raise ConfigError(f"{dataset} images come as {', '.join(naming.kinds)}, not {kind}")
    if patch <= 0 or stride <= 0:
        raise ConfigError(f"patch {patch} and stride {stride} must be positive")
    if image_format not in ("auto", "png", "tif"):
        raise ConfigError(f"image format {image_format!r}: use auto, png or tif")
    splits = {
        name: [str(tile) for tile in ids]
        for name, ids in (splits or DEFAULT_SPLITS[dataset]).items()
    }
    unknown = set(splits) - {"train", "val", "test"}
    if unknown:
        raise ConfigError(f"split {sorted(unknown)[0]!r}: use train, val or test")
    image_tiles = _index_tiles(images, naming.image.format(kind=kind), "image")
    if not image_tiles:
        raise FileNotFoundError(
            f"no {dataset} {kind} tiles (like {naming.image.format(kind=kind)}) in {images}"
        )
    label_tiles = _index_tiles(labels, naming.label, "label")
    eroded_tiles = (
        _index_tiles(eroded_labels, naming.eroded_label, "eroded label")
        if eroded_labels is not None else {}
    )
    if (out / SUMMARY_FILE).exists():
        raise ConfigError(f"{out} already holds prepared patches; choose an empty --out")
    decoder = ColorDecoder(CLASSES, [BOUNDARY_COLOR])
    summary: dict[str, Any] = {
        "dataset": dataset, "image_kind": kind, "patch": patch, "stride": stride,
        "bands": [band.to_dict() for band in default_bands(kind)],
        "splits": {}, "missing_tiles": [], "patches": {},
    }
    for split, ids in splits.items():
        evaluation = split != "train" and eroded_labels is not None
        for sub in ("images", "masks"):
            (out / split / sub).mkdir(parents=True, exist_ok=True)
        done = []
        count = 0
        for tile in ids:
            if tile not in image_tiles:
                summary["missing_tiles"].append(tile)
                continue
            source = (eroded_tiles if evaluation else label_tiles).get(tile)
            if source is None:
                where = eroded_labels if evaluation else labels
                raise FileNotFoundError(f"tile {tile} has no label in {where}")
            count += _cut_tile(
                image_tiles[tile], source, out / split, _patch_prefix(dataset, tile),
                patch, stride, image_format, decoder,
            )
            done.append(tile)
            if progress is not None:
                progress(f"{split}: tile {tile} done ({count} patches)")
        summary["splits"][split] = done
        summary["patches"][split] = count
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def _patch_prefix(dataset: str, tile: str) -> str:
    return f"area{tile}" if dataset == "vaihingen" else tile


def _cut_tile(
    image_path: Path, label_path: Path, out: Path, prefix: str, patch: int, stride: int,
    image_format: str, decoder: ColorDecoder,
) -> int:
    image = gdal.Open(str(image_path))
    label = gdal.Open(str(label_path))
    size = (image.RasterXSize, image.RasterYSize)
    if (label.RasterXSize, label.RasterYSize) != size or label.RasterCount < 3:
        raise ConfigError(
            f"{label_path.name} ({label.RasterXSize}x{label.RasterYSize}, {label.RasterCount} "
            f"bands) must be an RGB label of its image's size {size[0]}x{size[1]}"
        )
    if image_format == "auto":
        plain = image.RasterCount == 3 and image.GetRasterBand(1).DataType == gdal.GDT_Byte
        image_format = "png" if plain else "tif"
    driver, options = (
        ("PNG", []) if image_format == "png" else ("GTiff", ["COMPRESS=DEFLATE"])
    )
    count = 0
    for y in window_starts(size[1], patch, stride):
        for x in window_starts(size[0], patch, stride):
            width, height = min(patch, size[0] - x), min(patch, size[1] - y)
            name = f"{prefix}_{x}_{y}"
            rgb = label.ReadAsArray(x, y, width, height)
            ids = decode_label(rgb, decoder, f"{label_path.name} at ({x}, {y})")
            _write_mask(out / "masks" / f"{name}.png", ids)
            gdal.Translate(
                str(out / "images" / f"{name}.{image_format}"), image,
                srcWin=[x, y, width, height], format=driver, creationOptions=options,
            )
            count += 1
    for stray in out.glob("*/*.aux.xml"):
        stray.unlink()
    return count


class ISPRS(ImageMaskFolder):
    """Patches written by :func:`prepare_isprs`, read by the folder layout."""

    def __init__(self, cfg: Mapping[str, Any], split: str) -> None:
        if cfg.get("root") in (None, ""):
            raise ConfigError("config: data.root is required for layout 'isprs'")
        root = Path(cfg["root"])
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}; check data.root")
        prepared = root / SUMMARY_FILE
        summary = json.loads(prepared.read_text()) if prepared.is_file() else {}
        dataset = cfg.get("dataset", summary.get("dataset"))
        if dataset not in NAMING:
            raise ConfigError(
                f"config: data.dataset {dataset!r}: use vaihingen or potsdam (or point "
                f"data.root at a folder written by `landcover prepare isprs`)"
            )
        bands = cfg.get("bands")
        if bands is None:
            bands = summary.get("bands") or [
                b.to_dict() for b in default_bands(NAMING[dataset].kinds[0])
            ]
        folder = split
        if split == "val" and not (root / "val").is_dir():
            folder = "test"
        if not (root / folder).is_dir():
            raise FileNotFoundError(
                f"no {folder} patches in {root}; cut the tiles first with "
                "`landcover prepare isprs`"
            )
        classes = cfg.get("classes") or [
            {"name": c.name, "color": list(c.color)} for c in CLASSES
        ]
        super().__init__(
            {
                "layout": "isprs",
                "root": str(root),
                "images": "{split}/images",
                "masks": "{split}/masks",
                "mask_suffix": ".png",
                "mask_encoding": "index",
                "classes": classes,
                "bands": bands,
                "cache_images": cfg.get("cache_images", True),
                "ignore_index": cfg.get("ignore_index", IGNORE_INDEX),
            },
            folder,
        )
