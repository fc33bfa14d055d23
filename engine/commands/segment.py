"""``landcover segment``: class raster, polygons and area table for one or more rasters.

Output modes: on a terminal a progress bar (tiles/s) and log lines on stderr, then the
area table on stdout; ``--json`` prints the run's summary as one JSON document on stdout;
``--progress-json`` streams JSON lines on stdout for the QGIS plugin:
``{"type": "progress", "fraction": f}``, ``{"type": "log", "level": l, "message": m}``,
``{"type": "result", ...summary}`` and ``{"type": "error", "message": m}``.
The first SIGINT or SIGTERM cancels after the current batch (outputs removed, exit 130);
a second one stops at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any, TextIO

from landcover.engine.commands.options import add_inference_arguments

# GDAL's block cache, unless the user sets GDAL_CACHEMAX: enough for a band of tiles of a
# wide raster; GDAL's default (5% of RAM) would let memory grow with the raster.
GDAL_CACHE_BYTES = 128 * 2**20
EXIT_CANCELLED = 130


def _band_list(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give band numbers separated by commas, e.g. 1,2,3"
        ) from None
    if not numbers:
        raise argparse.ArgumentTypeError("give at least one band number, e.g. 1,2,3")
    return numbers


def _wavelength_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < value < float("inf") for value in values):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give positive wavelengths in micrometres separated by commas, "
            "e.g. 0.665,0.56,0.49"
        )
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="raster(s) to segment; several (multi-modal models) are aligned onto the first "
             "one's grid on the fly",
    )
    parser.add_argument("--model", required=True, metavar="FILE", help="model package")
    parser.add_argument("--out-raster", required=True, metavar="CLASSES.tif",
                        help="class raster (GeoTIFF, uint8, nodata 255); the area table goes "
                             "beside it as CLASSES.areas.json")
    parser.add_argument("--out-vector", metavar="POLYGONS.gpkg", help="class polygons")
    parser.add_argument("--out-confidence", metavar="CONF.tif",
                        help="confidence raster: the winning class's probability in percent "
                             "(uint8 0..100, nodata 255)")
    add_inference_arguments(parser)
    parser.add_argument("--bands", type=_band_list, metavar="1,2,3",
                        help="input bands (1-based, counted across inputs) in the model's order")
    parser.add_argument("--wavelengths", type=_wavelength_list, metavar="0.665,0.56,0.49",
                        help="central wavelengths (micrometres) of the optical bands, for a "
                             "wavelength-conditioned model (e.g. upseg); default: the input "
                             "bands' metadata, else the model's")
    parser.add_argument("--nodata", type=float, metavar="VALUE",
                        help="nodata value of the inputs (overrides theirs)")
    parser.add_argument("--gsd", default="auto", metavar="auto|native|METRES",
                        help="auto: resample on the fly to the model's ground sample distance "
                             "when the input's differs by 1.25x-4x; native: never; METRES: run "
                             "at this GSD")
    parser.add_argument("--simplify", type=float, metavar="TOLERANCE",
                        help="simplify polygons (CRS units), keeping shared boundaries")
    parser.add_argument("--min-area", type=float, metavar="AREA",
                        help="merge pieces smaller than AREA (m2, or CRS units2) into their "
                             "largest neighbour, in the raster and the polygons")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="print the run's summary as JSON on stdout")
    output.add_argument("--progress-json", action="store_true",
                        help="stream progress, log lines and the result as JSON lines")


class _Cancel:
    """Turns the first SIGINT/SIGTERM into a cancel request; a second one interrupts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Cancel:
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


class _JsonLines:
    """Progress, log lines and the result as JSON lines on stdout."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last = -1.0

    def _send(self, message: dict[str, Any]) -> None:
        self.stream.write(json.dumps(message) + "\n")
        self.stream.flush()

    def start(self, segmenter: Any) -> None:
        pass

    def log(self, level: str, message: str) -> None:
        self._send({"type": "log", "level": level, "message": message})

    def progress(self, fraction: float) -> None:
        if fraction - self._last >= 0.001 or fraction >= 1.0:
            self._last = fraction
            self._send({"type": "progress", "fraction": round(fraction, 4)})

    def error(self, message: str) -> None:
        self._send({"type": "error", "message": message})

    def result(self, summary: dict[str, Any]) -> None:
        self._send({"type": "result", **summary})

    def close(self) -> None:
        pass


class _Terminal:
    """A tqdm bar of tiles (when stderr is a terminal) and log lines on stderr; the result
    as a table, or as JSON with ``--json``, on stdout."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.bar = None
        self.segmenter = None

    def start(self, segmenter: Any) -> None:
        self.segmenter = segmenter
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=len(segmenter.tiles), unit="tile", desc="segmenting",
                            file=sys.stderr, dynamic_ncols=True)

    def log(self, level: str, message: str) -> None:
        line = f"landcover: {'warning: ' if level == 'warning' else ''}{message}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def progress(self, fraction: float) -> None:
        if self.bar is not None and self.segmenter is not None:
            self.bar.update(self.segmenter.tiles_done - self.bar.n)

    def error(self, message: str) -> None:
        self.close()

    def result(self, summary: dict[str, Any]) -> None:
        self.close()
        if self.as_json:
            print(json.dumps(summary, indent=2))
        else:
            print(_format_summary(summary))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _format_summary(summary: dict[str, Any]) -> str:
    unit = summary["area_unit"]
    width = max([len("class"), *(len(c["name"]) for c in summary["classes"])])
    lines = [f"{'class':<{width}}  {'pixels':>14}  {f'area ({unit})':>18}  {'share':>7}"]
    for entry in summary["classes"]:
        lines.append(
            f"{entry['name']:<{width}}  {entry['pixels']:>14,}  {entry['area']:>18,.1f}  "
            f"{entry['percent']:>6.2f}%"
        )
    lines.append(f"{'nodata':<{width}}  {summary['nodata_pixels']:>14,}")
    written = [summary["out_raster"], summary["areas_json"]]
    for key in ("out_confidence", "out_vector"):
        if summary[key]:
            written.append(summary[key])
    polygons = f" ({summary['polygons']:,} polygons)" if summary["polygons"] is not None else ""
    seconds = summary["seconds"]
    lines.append(f"wrote {', '.join(written)}{polygons} in {seconds['total']:.1f} s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from osgeo import gdal

    from landcover.engine.errors import LandcoverError, SegmentationCancelled
    from landcover.engine.inference.segment import Segmenter, check_run_options

    if "GDAL_CACHEMAX" not in os.environ:
        gdal.SetCacheMax(GDAL_CACHE_BYTES)
    reporter = _JsonLines(sys.stdout) if args.progress_json else _Terminal(args.json)
    with _Cancel() as cancel:
        try:
            check_run_options(
                args.inputs, args.out_raster, out_vector=args.out_vector,
                out_confidence=args.out_confidence, simplify=args.simplify,
                min_area=args.min_area,
            )
            segmenter = Segmenter(
                args.inputs, args.model, tile=args.tile, overlap=args.overlap,
                batch_size=args.batch, device=args.device, tta=args.tta, bands=args.bands,
                nodata=args.nodata, gsd=args.gsd, wavelengths=args.wavelengths,
                log=reporter.log,
            )
            reporter.start(segmenter)
            result = segmenter.run(
                args.out_raster, out_vector=args.out_vector,
                out_confidence=args.out_confidence, simplify=args.simplify,
                min_area=args.min_area, progress=reporter.progress, is_cancelled=cancel,
            )
        except (SegmentationCancelled, KeyboardInterrupt):
            reporter.error("cancelled: no output was written")
            print("landcover: cancelled: no output was written", file=sys.stderr)
            return EXIT_CANCELLED
        except (LandcoverError, OSError) as error:
            reporter.error(str(error))
            raise
        finally:
            reporter.close()
    reporter.result(result.to_dict())
    return 0
