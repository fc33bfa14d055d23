"""``landcover benchmark KIND``: measure models or the segmentation pipeline.

Each kind is a module under :mod:`landcover.engine.benchmarks` with ``add_arguments(parser)``
and ``run(args) -> int``; like the commands, it imports heavy packages only inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib

# kind -> (module under landcover.engine.benchmarks, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "models": ("models", "parameters, MACs, latency and memory of model architectures"),
    "segment": ("segment", "the segmentation pipeline end to end on large generated rasters"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="benchmark", metavar="KIND", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        module = importlib.import_module(f"landcover.engine.benchmarks.{module_name}")
        sub = kinds.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(_benchmark_run=module.run)


def run(args: argparse.Namespace) -> int:
    return args._benchmark_run(args)
