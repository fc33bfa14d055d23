"""Build the installable QGIS plugin zip: ``python scripts/build_plugin_zip.py``.

The zip holds one folder, ``landcover/`` (QGIS installs a plugin under the name of its
folder, and the code imports itself as ``landcover``), with what QGIS and the engine need:
``__init__.py``, ``metadata.txt``, ``plugin/``, ``engine/``, ``resources/`` (icon, bundled
model), the licence and README when present, and ``requirements-engine.txt`` made from
pyproject.toml for "Set up engine". Tests, training code, sample data, venvs, caches and
machine-specific files stay out. Entries are sorted and dated alike, so equal trees give
equal zips.
"""

from __future__ import annotations

import argparse
import configparser
import fnmatch
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_NAME = "landcover"
# What goes in, relative to the repository root; folders are walked.
INCLUDED = ("__init__.py", "metadata.txt", "LICENSE", "README.md", "plugin", "engine", "resources")
# What stays out wherever it appears (fnmatch on the path relative to the root, and on
# each part of it).
EXCLUDED = (
    "__pycache__", "*.pyc", "*.pyo", ".*", "*.aux.xml", "*.egg-info",
    "plugin/engine_python.txt",  # the machine's own engine interpreter, written by setup.sh
    "resources/samples",  # sample rasters for the README; QGIS does not need them
)
REQUIREMENTS_NAME = "requirements-engine.txt"
FIXED_DATE = (2024, 1, 1, 0, 0, 0)


def _excluded(relative: str) -> bool:
    parts = relative.split("/")
    return any(
        fnmatch.fnmatch(relative, pattern) or any(fnmatch.fnmatch(p, pattern) for p in parts)
        or relative.startswith(pattern + "/")
        for pattern in EXCLUDED
    )


def plugin_files(root: Path = ROOT) -> Iterator[tuple[Path, str]]:
    """(file, path inside the plugin folder) for everything the zip holds, sorted."""
    found = []
    for entry in INCLUDED:
        path = root / entry
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in candidates:
            relative = file.relative_to(root).as_posix()
            if file.is_file() and not _excluded(relative):
                found.append((file, relative))
    return iter(sorted(found, key=lambda item: item[1]))


def engine_requirements(root: Path = ROOT) -> str:
    with (root / "pyproject.toml").open("rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    header = "# The engine's pinned requirements (from pyproject.toml), for 'Set up engine'.\n"
    return header + "".join(f"{requirement}\n" for requirement in dependencies)


def plugin_version(root: Path = ROOT) -> str:
    metadata = configparser.ConfigParser(interpolation=None)
    metadata.read(root / "metadata.txt", encoding="utf-8")
    return metadata["general"]["version"]


def build_zip(out_dir: Path, root: Path = ROOT) -> Path:
    """Write ``<out_dir>/landcover-<version>.zip`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN_NAME}-{plugin_version(root)}.zip"
    entries = [(relative, file.read_bytes()) for file, relative in plugin_files(root)]
    entries.append((REQUIREMENTS_NAME, engine_requirements(root).encode()))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative, data in sorted(entries):
            info = zipfile.ZipInfo(f"{PLUGIN_NAME}/{relative}", date_time=FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir", type=Path, default=ROOT / "dist", help="folder for the zip (default: dist/)"
    )
    args = parser.parse_args(argv)
    target = build_zip(args.out_dir)
    with zipfile.ZipFile(target) as archive:
        count = len(archive.namelist())
    print(f"wrote {target} ({count} files, {target.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
