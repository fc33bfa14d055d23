"""``landcover export``: a training checkpoint -> a model package (deploy form)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by landcover train")
    parser.add_argument("--out", required=True, type=Path, help="model package to write")
    parser.add_argument("--half", action="store_true", help="store the weights as float16")
    parser.add_argument("--gsd", type=float, help="ground sample distance in metres")
    parser.add_argument("--tile", type=int, help="recommended tile size (pixels)")
    parser.add_argument("--overlap", type=int, help="recommended tile overlap (pixels)")


def run(args: argparse.Namespace) -> int:
    from landcover.training.export import export_checkpoint

    meta = export_checkpoint(
        args.checkpoint, args.out, half=args.half, gsd_m=args.gsd, tile_size=args.tile,
        tile_overlap=args.overlap,
    )
    metrics = meta.training.get("val_metrics") or {}
    score = f", validation mIoU {metrics['miou']:.4f}" if metrics.get("miou") is not None else ""
    print(f"wrote {args.out}: {meta.arch}, {meta.num_classes} classes, "
          f"{meta.in_channels} bands{score}")
    return 0
