"""``landcover prepare isprs``: cut the published ISPRS Vaihingen / Potsdam tiles into
training patches (the ``isprs`` data layout reads the result)."""

from __future__ import annotations

import argparse
from pathlib import Path

from landcover.engine.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=("isprs",), help="which published data set")
    parser.add_argument("--dataset", required=True, choices=("vaihingen", "potsdam"))
    parser.add_argument("--images", required=True, type=Path,
                        help="folder of image tiles (Vaihingen top/, Potsdam 2_Ortho_RGB/ ...)")
    parser.add_argument("--labels", required=True, type=Path,
                        help="folder of the RGB-coded label tiles")
    parser.add_argument("--eroded-labels", type=Path,
                        help="folder of the eroded (_noBoundary) labels: masks of test/val")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--patch", type=int, default=512, help="patch size in pixels")
    parser.add_argument("--stride", type=int, default=512, help="step between patches")
    parser.add_argument(
        "--split", action="append", default=[], metavar="NAME=IDS",
        help="tile ids of a split, e.g. train=1,3,5 or val=2_10 (repeat per split; "
             "default: the common train/test split)",
    )
    parser.add_argument("--image-kind", choices=("RGB", "IRRG", "RGBIR"),
                        help="Potsdam image product (default RGB; Vaihingen is IRRG)")
    parser.add_argument("--format", default="auto", choices=("auto", "png", "tif"),
                        help="patch image format (auto: PNG for 8-bit 3-band, else GeoTIFF)")


def parse_splits(items: list[str]) -> dict[str, list[str]] | None:
    """``["train=1,3", "test=2"]`` -> ``{"train": ["1", "3"], "test": ["2"]}``."""
    if not items:
        return None
    splits: dict[str, list[str]] = {}
    for item in items:
        name, sep, ids = item.partition("=")
        tiles = [tile.strip() for tile in ids.split(",") if tile.strip()]
        if not sep or not tiles:
            raise ConfigError(f"--split {item!r}: write NAME=ID,ID,... (e.g. train=1,3,5)")
        splits.setdefault(name.strip(), []).extend(tiles)
    return splits


def run(args: argparse.Namespace) -> int:
    from landcover.training.datasets.isprs import prepare_isprs

    summary = prepare_isprs(
        args.dataset, args.images, args.labels, args.out,
        eroded_labels=args.eroded_labels, patch=args.patch, stride=args.stride,
        splits=parse_splits(args.split), image_kind=args.image_kind,
        image_format=args.format, progress=print,
    )
    for split, count in summary["patches"].items():
        print(f"{split}: {count} patches from {len(summary['splits'][split])} tiles")
    if summary["missing_tiles"]:
        print(f"not found (skipped): tiles {', '.join(summary['missing_tiles'])}")
    print(f"use it with: data: {{layout: isprs, root: {args.out}}}")
    return 0
