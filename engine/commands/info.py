"""``landcover info``: print a model package's metadata as JSON (reads the header only)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from landcover.engine.modelfile import FORMAT_NAME, inspect_model_package


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="model package (.lcm or .safetensors)")


def run(args: argparse.Namespace) -> int:
    info = inspect_model_package(args.file)
    document = {
        "file": str(info.path),
        "format": FORMAT_NAME,
        "format_version": info.format_version,
        **info.meta.to_dict(),
        "parameters": info.parameter_count,
        "weights_dtype": ",".join(info.weight_dtypes),
        "file_bytes": info.file_bytes,
        "weights_sha256": info.weights_sha256,
    }
    text = json.dumps(document, indent=2)
    # one line per colour / shape: collapse arrays that hold only numbers
    text = re.sub(
        r"\[\s+([-+0-9.eE,\s]+?)\s+\]",
        lambda match: "[" + ", ".join(v.strip() for v in match.group(1).split(",")) + "]",
        text,
    )
    print(text)
    return 0
