"""Dataset layouts by name: ``build_dataset(config["data"], split)``.

Each layout module registers a builder ``(data_cfg, split) -> SegmentationDataset``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from landcover.engine.errors import ConfigError
from landcover.training.datasets.base import SegmentationDataset
from landcover.training.datasets.folder import ImageMaskFolder
from landcover.training.datasets.hunan import Hunan
from landcover.training.datasets.isprs import ISPRS
from landcover.training.datasets.loveda import LoveDA
from landcover.training.datasets.raster import RasterWindows

SPLITS = ("train", "val", "test")

LAYOUTS: dict[str, Callable[[Mapping[str, Any], str], SegmentationDataset]] = {
    "folder": ImageMaskFolder,
    "loveda": LoveDA,
    "isprs": ISPRS,
    "raster": RasterWindows,
    "hunan": Hunan,
}


def build_dataset(data_cfg: Mapping[str, Any], split: str) -> SegmentationDataset:
    """The dataset of ``data_cfg["layout"]`` for ``split`` (train, val or test)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    layout = data_cfg.get("layout")
    builder = LAYOUTS.get(layout)
    if builder is None:
        raise ConfigError(
            f"config: unknown data.layout {layout!r}; known layouts: {', '.join(sorted(LAYOUTS))}"
        )
    return builder(data_cfg, split)


__all__ = ["LAYOUTS", "SPLITS", "SegmentationDataset", "build_dataset"]
