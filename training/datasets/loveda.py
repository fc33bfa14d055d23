"""LoveDA as published: ``Train|Val|Test / Urban|Rural / images_png|masks_png``.

Config (``data:``)::

    layout: loveda
    root: path/to/LoveDA          # holds Train/, Val/ (and Test/)
    domains: [Urban, Rural]       # default both; e.g. [Rural] for one domain
    classes: ...                  # default: the LoveDA preset (7 classes)
    bands: rgb                    # default: the LoveDA preset (ImageNet statistics)
    cache_images: false           # true keeps decoded 1024x1024 images in memory

Splits train, val and test read ``Train``, ``Val`` and ``Test``. Masks are single-band PNGs
in LoveDA's raw coding: 0 is no-data (ignored), 1..7 are background, building, road,
water, barren, forest and agriculture (class ids 0..6). The test masks are not public
(the benchmark scores test predictions on its server), so the test split fails with a
message that says so. Each domain is read by the folder layout, with a config derived
from this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from landcover.engine.errors import ConfigError
from landcover.engine.modelfile import BandInfo
from landcover.engine.presets import PRESETS
from landcover.training.datasets.base import (
    Sample,
    SegmentationDataset,
    bands_from_config,
    classes_from_config,
)
from landcover.training.datasets.folder import ImageMaskFolder

SPLIT_FOLDERS = {"train": "Train", "val": "Val", "test": "Test"}
DOMAINS = ("Urban", "Rural")
NO_DATA = 0


class LoveDA(SegmentationDataset):
    """The chosen domains of one LoveDA split, one after the other."""

    def __init__(self, cfg: Mapping[str, Any], split: str) -> None:
        if cfg.get("root") in (None, ""):
            raise ConfigError("config: data.root is required for layout 'loveda'")
        root = Path(cfg["root"])
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}; check data.root")
        domains = cfg.get("domains", DOMAINS)
        if isinstance(domains, str):
            domains = [domains]
        unknown = [d for d in domains if d not in DOMAINS]
        if unknown or not domains:
            raise ConfigError(
                f"config: data.domains {list(domains)!r}: use Urban and/or Rural"
            )
        preset = PRESETS["loveda"]
        classes = cfg.get("classes") or [
            {"name": c.name, "color": list(c.color)} for c in preset.classes
        ]
        self.classes = classes_from_config(classes, "data.classes")
        bands = cfg.get("bands")
        self.bands = preset.bands if bands is None else bands_from_config(bands, "data.bands")
        folder = SPLIT_FOLDERS[split]
        if split == "test":
            for domain in domains:
                if not (root / folder / domain / "masks_png").is_dir():
                    raise FileNotFoundError(
                        f"{root / folder / domain} has no masks_png: the LoveDA test masks "
                        "are not public (test predictions are scored on the benchmark "
                        "server); evaluate on the val split"
                    )
        self.parts = [
            ImageMaskFolder(self._folder_config(cfg, classes, self.bands, domain), folder)
            for domain in domains
        ]
        self.ignore_index = self.parts[0].ignore_index
        self._offsets = np.cumsum([0] + [len(part) for part in self.parts])

    @staticmethod
    def _folder_config(
        cfg: Mapping[str, Any], classes: list, bands: tuple[BandInfo, ...], domain: str
    ) -> dict[str, Any]:
        # The folder layout fills "{split}" with the name it is given: here the LoveDA
        # split folder (Train/Val/Test), so each domain is one folder-layout dataset.
        return {
            "layout": "loveda",
            "root": cfg["root"],
            "images": f"{{split}}/{domain}/images_png",
            "masks": f"{{split}}/{domain}/masks_png",
            "mask_suffix": ".png",
            "mask_encoding": "index",
            "mask_offset": 1,
            "ignore_values": [NO_DATA],
            "classes": classes,
            "bands": [band.to_dict() for band in bands],
            "cache_images": bool(cfg.get("cache_images", False)),
            "ignore_index": cfg.get("ignore_index", 255),
        }

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return self.parts[part][index - int(self._offsets[part])]
