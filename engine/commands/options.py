"""Command-line options shared by the commands that run a model over images (segment,
evaluate). Standard library only: parsers are built before torch is imported."""

from __future__ import annotations

import argparse

# The names of engine.inference.predictor.TTA_TRANSFORMS (a test keeps them equal).
TTA_MODES = ("none", "flip", "d4", "d4_plus")


def add_inference_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--tile``, ``--overlap``, ``--batch``, ``--device`` and ``--tta``."""
    parser.add_argument("--tile", type=int, metavar="N",
                        help="tile size in pixels, a multiple of 32 (default: the model's)")
    parser.add_argument("--overlap", type=int, metavar="N",
                        help="tile overlap in pixels, at most half a tile (default: the model's "
                             "share of the tile)")
    parser.add_argument("--batch", type=int, default=4, metavar="N", help="tiles per batch")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument("--tta", choices=TTA_MODES, default="none",
                        help="test-time augmentation: flip = 3 passes, d4 = 8 passes per tile, "
                             "d4_plus = 13 (d4, scales 0.75/1.25/1.5, brightness x0.9/x1.1)")
