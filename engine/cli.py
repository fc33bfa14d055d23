"""The ``landcover`` command line: ``landcover SUBCOMMAND [options]``.

User errors (:class:`~landcover.engine.errors.LandcoverError`, missing files, bad values)
print one line and exit with status 2; ``--debug`` (or ``LANDCOVER_DEBUG=1``) shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from landcover.engine.runtime import keep_freed_memory, quiet_openmp_waits

quiet_openmp_waits()  # before any subcommand imports torch

from landcover.engine.commands import COMMANDS  # noqa: E402
from landcover.engine.errors import LandcoverError  # noqa: E402

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` gets its arguments (and imports)."""
    parser = argparse.ArgumentParser(
        prog="landcover",
        description="Segment land cover in remote sensing rasters with Mamba-based networks.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(f"landcover.engine.commands.{module_name}")
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come after options (argparse stops collecting positionals
    # at the first option).
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
        "=" in item and not item.startswith("-") for item in extra
    ):
        args.overrides.extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    keep_freed_memory()
    debug = args.debug or os.environ.get("LANDCOVER_DEBUG") == "1"
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("landcover: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except (LandcoverError, FileNotFoundError, PermissionError, IsADirectoryError) as error:
        if debug:
            raise
        print(f"landcover: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
