"""Segment rasters: the engine's main job, behind ``landcover segment`` and the QGIS tool.

``segment(inputs, model, out_raster, ...)`` reads the input in overlapping tiles (never the
whole raster), runs the model in batches, blends the tiles and writes the class raster
(and optionally a confidence raster) block by block on the input's grid, then optionally
sieves small pieces, makes class polygons, and tabulates class areas. Everything is written
under temporary names and renamed only at the end; a failure or a cancel (checked between
batches) removes them and raises.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal

from landcover.engine.errors import ConfigError, InputRasterError, SegmentationCancelled
from landcover.engine.inference import vectorize
from landcover.engine.inference.blend import StreamingBlender
from landcover.engine.inference.predictor import Predictor, select_device
from landcover.engine.inference.tiler import TileGrid
from landcover.engine.modelfile import ModelMeta, ModelPackage, load_model_package
from landcover.engine.raster.areas import AreaMeasure, tabulate_class_areas
from landcover.engine.raster.grid import Grid, ground_sample_distance
from landcover.engine.raster.source import (
    RasterSource,
    data_band_numbers,
    open_raster,
    open_source,
    warp_onto,
)
from landcover.engine.raster.writer import (
    NODATA,
    BlockRowWriter,
    PendingOutputs,
    check_writable,
    create_class_raster,
    create_confidence_raster,
    create_geotiff,
)

gdal.UseExceptions()
LOGGER = logging.getLogger("landcover.segment")

# --gsd auto resamples when the input's GSD differs from the model's by more than this
# factor but less than GSD_LIMIT; beyond the limit it warns and runs at native resolution.
GSD_TOLERANCE = 1.25
GSD_LIMIT = 4.0
# Progress share of each stage (normalised over the stages a run has).
_STAGE_WEIGHTS = {"tiles": 1.0, "resample": 0.1, "sieve": 0.05, "areas": 0.02, "polygons": 0.3}
_PROBABILITY_SCALE = 255  # probabilities stored as uint8 when resampled back

Log = Callable[[str, str], None]  # (level: "info" | "warning", message)
Progress = Callable[[float], None]
IsCancelled = Callable[[], bool]


def _log_to_logging(level: str, message: str) -> None:
    LOGGER.log(logging.WARNING if level == "warning" else logging.INFO, message)


def areas_json_path(out_raster: str | os.PathLike[str]) -> Path:
    """Where the area table of ``out_raster`` goes: beside it, ``NAME.areas.json``."""
    return Path(out_raster).with_suffix(".areas.json")


@dataclass
class ClassArea:
    """One row of the area table; ``area`` is in the run's ``area_unit``, ``area_m2`` the
    same in square metres (None without a CRS), ``percent`` its share of the valid area."""

    id: int
    name: str
    color: tuple[int, int, int]
    pixels: int
    area: float
    area_m2: float | None
    percent: float


@dataclass
class SegmentResult:
    """What a run wrote and measured; ``to_dict`` gives the JSON summary."""

    out_raster: str
    out_confidence: str | None
    out_vector: str | None
    areas_json: str
    device: str
    precision: str
    tiles: int
    tiles_run: int
    tiles_skipped: int
    tile_size: tuple[int, int]
    overlap: int
    batch_size: int
    tta: str
    passes_per_tile: int
    input_gsd_m: float | None
    model_gsd_m: float | None
    processing_gsd_m: float | None
    resampled: bool
    area_unit: str
    classes: list[ClassArea]
    nodata_pixels: int
    polygons: int | None
    warnings: list[str]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class _StageProgress:
    """Maps each stage's own 0..1 onto the run's overall fraction."""

    def __init__(self, report: Progress, stages: Sequence[str]) -> None:
        total = sum(_STAGE_WEIGHTS[s] for s in stages)
        self.report = report
        self.spans: dict[str, tuple[float, float]] = {}
        start = 0.0
        for stage in stages:
            width = _STAGE_WEIGHTS[stage] / total
            self.spans[stage] = (start, width)
            start += width

    def __call__(self, stage: str) -> Progress:
        start, width = self.spans[stage]
        return lambda fraction: self.report(min(1.0, start + width * min(max(fraction, 0.0), 1.0)))


class _ClassSink:
    """Turns blended probabilities into class ids (and confidence percent) for a writer."""

    def __init__(self, writer: BlockRowWriter, with_confidence: bool) -> None:
        self.writer = writer
        self.with_confidence = with_confidence

    def emit(self, row: int, col: int, weighted: np.ndarray, weight: np.ndarray) -> None:
        invalid = weight <= 0
        winner = weighted.argmax(axis=0)
        classes = winner.astype(np.uint8)
        classes[invalid] = NODATA
        planes = [classes]
        if self.with_confidence:
            best = np.take_along_axis(weighted, winner[None], axis=0)[0]
            confidence = np.rint(100.0 * best / np.where(invalid, 1.0, weight)).astype(np.uint8)
            confidence[invalid] = NODATA
            planes.append(confidence)
        self.writer.put(row, col, np.stack(planes))

    def rows_complete(self, row: int) -> None:
        self.writer.rows_complete(row)


class _ProbabilitySink:
    """Stores blended probabilities as uint8 (x255) for resampling back to the input grid."""

    def __init__(self, writer: BlockRowWriter) -> None:
        self.writer = writer

    def emit(self, row: int, col: int, weighted: np.ndarray, weight: np.ndarray) -> None:
        scale = np.where(weight > 0, _PROBABILITY_SCALE / np.maximum(weight, 1e-30), 0.0)
        self.writer.put(row, col, np.rint(weighted * scale).astype(np.uint8))

    def rows_complete(self, row: int) -> None:
        self.writer.rows_complete(row)


def _scratch_beside(temporary: Path, kind: str) -> Path:
    """An intermediate file named like the temporary output (``.NAME.TOKEN.partial-KIND``),
    so whoever cleans up after a killed run finds it too."""
    return temporary.with_name(temporary.name.replace(".partial", f".partial-{kind}"))


def _remove_with_sidecars(path: Path) -> None:
    for candidate in (path, Path(f"{path}.aux.xml")):
        candidate.unlink(missing_ok=True)


def check_run_options(
    inputs: Sequence[str | os.PathLike[str]],
    out_raster: str | os.PathLike[str],
    *,
    out_vector: str | os.PathLike[str] | None = None,
    out_confidence: str | os.PathLike[str] | None = None,
    simplify: float | None = None,
    min_area: float | None = None,
) -> None:
    """Fail early, before any work, on outputs that cannot be written or are inputs, and
    on bad polygon options."""
    if simplify is not None and not simplify > 0:
        raise ConfigError(f"--simplify {simplify}: the tolerance must be positive")
    if simplify is not None and out_vector is None:
        raise ConfigError("--simplify applies to polygons: add --out-vector")
    if min_area is not None and not min_area > 0:
        raise ConfigError(f"--min-area {min_area}: the area must be positive")
    for output in (out_raster, out_vector, out_confidence):
        if output is None:
            continue
        check_writable(Path(output))
        if any(Path(output).resolve() == Path(i).resolve() for i in inputs):
            raise ConfigError(f"output {output} is an input; choose another name")


def check_modalities(inputs: Sequence[str], meta: ModelMeta) -> None:
    """A multi-modal model takes one raster per modality, in the package's order, each with
    that modality's band count (``--bands`` picks bands across inputs instead)."""
    modalities = meta.modalities or []
    layout = ", ".join(f"{m.name} ({len(m.bands)} band{'s' * (len(m.bands) > 1)})"
                       for m in modalities)
    if len(inputs) < len(modalities):
        missing = ", ".join(m.name for m in modalities[len(inputs):])
        raise InputRasterError(
            f"the model takes one raster per modality, in this order: {layout}; got "
            f"{len(inputs)}, so {missing} is missing"
        )
    if len(inputs) > len(modalities):
        raise InputRasterError(
            f"the model takes one raster per modality, in this order: {layout}; got "
            f"{len(inputs)}: leave out {', '.join(inputs[len(modalities):])}"
        )
    for path, modality in zip(inputs, modalities, strict=True):
        count = len(data_band_numbers(open_raster(path)))
        if count != len(modality.bands):
            raise InputRasterError(
                f"{path} has {count} band{'s' * (count > 1)} but is in the place of modality "
                f"{modality.name} ({len(modality.bands)}: {', '.join(modality.bands)}); pass "
                f"the rasters in the model's order: {layout}"
            )


# Central wavelength in band metadata: CENTRAL_WAVELENGTH_UM in the IMAGERY domain (GDAL
# >= 3.10 fills it from sensor metadata; GeoTIFF keeps the domain with older GDAL too), or
# ENVI-style WAVELENGTH with WAVELENGTH_UNITS (any domain, keys in any case).
_UNITS_IN_UM = {
    "um": 1.0, "µm": 1.0, "micrometers": 1.0, "micrometres": 1.0, "microns": 1.0,
    "nm": 1e-3, "nanometers": 1e-3, "nanometres": 1e-3,
}


def band_wavelength_um(band: gdal.Band) -> float | None:
    """A band's central wavelength in micrometres from its metadata, or None."""
    for domain in ("IMAGERY", ""):
        items = {key.upper(): value for key, value in (band.GetMetadata(domain) or {}).items()}
        text, scale = items.get("CENTRAL_WAVELENGTH_UM"), 1.0
        if text is None:
            text = items.get("WAVELENGTH")
            scale = _UNITS_IN_UM.get(items.get("WAVELENGTH_UNITS", "").strip().lower())
        try:
            value = float(text) * scale
        except (TypeError, ValueError):  # absent, unknown units or not a number
            continue
        if math.isfinite(value) and value > 0:
            return value
    return None


def _input_wavelengths(inputs: Sequence[str], bands: Sequence[int] | None) -> list[float | None]:
    """The metadata wavelength of the input band behind each model channel (``bands``:
    1-based across the inputs)."""
    available = []
    for path in inputs:
        dataset = open_raster(path)  # alive while its bands are read (GDAL < 3.8 needs it)
        available += [band_wavelength_um(dataset.GetRasterBand(n))
                      for n in data_band_numbers(dataset)]
    return available if bands is None else [available[b - 1] for b in bands]


class Segmenter:
    """A prepared segmentation: model loaded, inputs opened and checked, tiles planned.

    Construct it (errors in the inputs or options surface here, before any work), read
    ``tiles`` and the plan it logged, then call :meth:`run`. ``tiles_done`` counts tiles
    processed so far (for rate displays). :func:`segment` does both in one call.
    """

    def __init__(
        self,
        inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        model: str | os.PathLike[str] | ModelPackage,
        *,
        tile: int | None = None,
        overlap: int | None = None,
        batch_size: int = 4,
        device: str = "auto",
        tta: str = "none",
        bands: Sequence[int] | None = None,
        nodata: float | None = None,
        gsd: str | float = "auto",
        tile_offset: tuple[int, int] = (0, 0),
        wavelengths: Sequence[float] | None = None,
        log: Log | None = None,
    ) -> None:
        self.warnings: list[str] = []
        self._log = log or _log_to_logging
        self.inputs = [os.fspath(p) for p in ([inputs] if isinstance(inputs, str | os.PathLike)
                                               else inputs)]
        if not self.inputs:
            raise ConfigError("no input raster given")
        torch_device, self.device = select_device(device)
        if isinstance(model, ModelPackage):
            package = model
            package.model.to(torch_device)
        else:
            package = load_model_package(model, device=torch_device)
        self.model_path = os.fspath(package.path)
        self.meta = meta = package.meta
        band_stats = {"mean": [b.mean for b in meta.bands], "std": [b.std for b in meta.bands],
                      "band_names": meta.band_names}
        if meta.modalities and bands is None:
            check_modalities(self.inputs, meta)
        self.native = open_source(self.inputs, bands=bands, nodata=nodata, **band_stats)
        self.wavelengths = self._set_wavelengths(package.model, wavelengths, bands)
        if bands is not None or len(self.inputs) > 1:
            pairs = zip(meta.band_names, self.native.descriptions, strict=True)
            self.log("info", "model bands from: " + ", ".join(f"{m} <- {d}" for m, d in pairs))
        self.input_grid = self.native.grid
        self.measure = AreaMeasure.for_grid(self.input_grid)
        if not self.input_grid.is_georeferenced:
            self.log("warning", f"{self.inputs[0]} has no georeferencing: the outputs lie on its "
                                "pixel grid without a CRS and areas are in pixels")
        elif not self.input_grid.crs_wkt:
            self.log("warning", f"{self.inputs[0]} has no CRS: areas are in map units")
        self.input_gsd = ground_sample_distance(self.input_grid)
        self.processing_gsd = self.input_gsd
        work_grid = self._plan_gsd(gsd)
        self.resampled = work_grid is not self.input_grid
        self.source: RasterSource = (
            open_source(self.inputs, bands=bands, nodata=nodata, grid=work_grid, **band_stats)
            if self.resampled else self.native
        )
        tile, overlap = meta.tiling(tile, overlap)
        self.tiles = TileGrid.plan(
            work_grid.width, work_grid.height, tile, overlap,
            multiple=getattr(package.model, "input_multiple", 32), offset=tile_offset,
        )
        self.predictor = Predictor(package.model, torch_device, batch_size=batch_size, tta=tta,
                                   band_mean=band_stats["mean"], band_std=band_stats["std"],
                                   log=self.log)
        self.tta = tta
        self.tiles_done = 0
        self.tiles_run = 0
        self._log_plan()

    def log(self, level: str, message: str) -> None:
        if level == "warning":
            self.warnings.append(message)
        self._log(level, message)

    def _set_wavelengths(
        self, model: Any, override: Sequence[float] | None, bands: Sequence[int] | None
    ) -> list[float] | None:
        """Give a wavelength-conditioned model its optical bands' wavelengths: from
        ``--wavelengths``, else from the input bands' metadata when every optical band has
        one, else the package's."""
        if not getattr(model, "wavelength_conditioned", False):
            if override is not None:
                raise ConfigError(
                    f"--wavelengths: model {self.meta.arch!r} is not wavelength-conditioned "
                    "(its input bands are fixed); leave --wavelengths out"
                )
            return None
        start = sum(model.modality_channels[: model.optical_index])
        optical = range(start, start + model.optical_wavelengths.numel())
        names = [self.meta.band_names[i] for i in optical]
        if override is not None:
            wavelengths, source = [float(w) for w in override], "--wavelengths"
            if len(wavelengths) != len(optical):
                raise ConfigError(
                    f"--wavelengths lists {len(wavelengths)} wavelengths but the model has "
                    f"{len(optical)} optical bands ({', '.join(names)}); give one per optical "
                    "band, in micrometres"
                )
        else:
            channels = _input_wavelengths(self.inputs, bands)
            wavelengths = [channels[i] for i in optical]
            source = "the input's band metadata"
            if None in wavelengths:
                packaged = [self.meta.bands[i].wavelength_um for i in optical]
                wavelengths = (model.optical_wavelengths.tolist() if None in packaged
                               else packaged)
                source = "the model package"
        model.set_optical_wavelengths(wavelengths)
        self.log("info", f"optical band wavelengths (µm) from {source}: "
                         + ", ".join(f"{n} {w:g}" for n, w in zip(names, wavelengths, strict=True)))
        return wavelengths

    def _plan_gsd(self, option: str | float) -> Grid:
        """The grid the model runs on: the input's, or one at another GSD (same extent)."""
        model_gsd, input_gsd, grid = self.meta.gsd_m, self.input_gsd, self.input_grid
        if option == "native":
            return grid
        if option == "auto":
            if model_gsd is None or input_gsd is None:
                return grid
            ratio = max(input_gsd / model_gsd, model_gsd / input_gsd)
            if ratio <= GSD_TOLERANCE:
                return grid
            if ratio >= GSD_LIMIT:
                self.log(
                    "warning",
                    f"the input's ground sample distance ({input_gsd:.3g} m) differs from the "
                    f"model's ({model_gsd:.3g} m) by {ratio:.1f}x: running at the native "
                    "resolution, so expect poor results; use a model made for this resolution",
                )
                return grid
            target = model_gsd
        else:
            try:
                target = float(option)
            except ValueError:
                raise ConfigError(
                    f"--gsd {option!r}: use auto, native or a size in metres"
                ) from None
            if not target > 0 or not math.isfinite(target):
                raise ConfigError(f"--gsd {option}: the size in metres must be positive")
            if input_gsd is None:
                raise ConfigError(
                    f"--gsd {option}: {self.inputs[0]} has no CRS, so its ground sample "
                    "distance is unknown; use --gsd native"
                )
        if grid.is_rotated:
            self.log("warning", f"{self.inputs[0]} has a rotated grid, which cannot be "
                                "resampled on the fly: running at the native resolution")
            return grid
        factor = target / input_gsd
        if abs(factor - 1.0) < 0.01:
            return grid
        self.processing_gsd = target
        work = grid.resampled(factor)
        self.log("info", f"resampling on the fly from {input_gsd:.3g} m to {target:.3g} m "
                         f"({grid.width}x{grid.height} -> {work.width}x{work.height} px); the "
                         "outputs are on the input's grid")
        return work

    def _log_plan(self) -> None:
        tiles, predictor = self.tiles, self.predictor
        self.log("info", f"device: {self.device}, {predictor.precision}")
        self.log("info", f"{len(tiles)} tiles of {tiles.tile_width}x{tiles.tile_height} px, "
                         f"overlap {tiles.overlap} px, batches of {predictor.batch_size}")
        if tiles.tile_width > tiles.width or tiles.tile_height > tiles.height:
            self.log("info", f"the raster ({tiles.width}x{tiles.height} px) is smaller than a "
                             "tile: it is padded by reflection")
        passes = predictor.passes_per_tile
        self.log("info", f"TTA {self.tta}: {passes} forward pass{'es' if passes > 1 else ''} "
                         "per tile")

    # ------------------------------------------------------------------------------ run

    def run(
        self,
        out_raster: str | os.PathLike[str],
        *,
        out_vector: str | os.PathLike[str] | None = None,
        out_confidence: str | os.PathLike[str] | None = None,
        simplify: float | None = None,
        min_area: float | None = None,
        progress: Progress | None = None,
        is_cancelled: IsCancelled | None = None,
    ) -> SegmentResult:
        """Write the outputs; raises :class:`SegmentationCancelled` (outputs removed) when
        ``is_cancelled()`` turns true, which is checked between batches."""
        check_run_options(self.inputs, out_raster, out_vector=out_vector,
                          out_confidence=out_confidence, simplify=simplify, min_area=min_area)
        progress = progress or (lambda fraction: None)
        is_cancelled = is_cancelled or (lambda: False)
        stages = ["tiles"] + ["resample"] * self.resampled + ["sieve"] * (min_area is not None)
        stages += ["areas"] + ["polygons"] * (out_vector is not None)
        stage = _StageProgress(progress, stages)
        timer = _Timer()
        started = time.perf_counter()
        pending = PendingOutputs()
        scratch: list[Path] = []
        try:
            class_path = pending.reserve(out_raster)
            confidence_path = pending.reserve(out_confidence) if out_confidence else None
            vector_path = pending.reserve(out_vector) if out_vector else None
            table_path = pending.reserve(areas_json_path(out_raster))
            raw_path = class_path
            if min_area is not None:
                raw_path = _scratch_beside(class_path, "raw")
                scratch.append(raw_path)
            self._write_rasters(raw_path, confidence_path, scratch, timer, stage, is_cancelled)
            if min_area is not None:
                with timer("sieve"):
                    self._sieve(raw_path, class_path, min_area, stage("sieve"), is_cancelled)
            with timer("areas"):
                classes, nodata_pixels = self._tabulate(class_path)
            stage("areas")(1.0)
            polygons = None
            if vector_path is not None:
                with timer("polygonize"):
                    polygons = self._polygons(class_path, vector_path, simplify, stage("polygons"),
                                              is_cancelled)
            result = self._result(out_raster, out_confidence, out_vector, classes,
                                  nodata_pixels, polygons)
            table_path.write_text(json.dumps(self._area_document(result), indent=2) + "\n")
            if is_cancelled():
                raise SegmentationCancelled("segmentation cancelled")
            pending.commit()
        except BaseException as error:
            # Close every GDAL dataset the failed frames still hold before deleting files,
            # or a late close would write a side-car .aux.xml after the clean-up.
            traceback.clear_frames(error.__traceback__)
            gc.collect()
            pending.discard()
            raise
        finally:
            for path in scratch:
                _remove_with_sidecars(path)
        timer.seconds["total"] = time.perf_counter() - started
        result.seconds = {k: round(v, 3) for k, v in timer.seconds.items()}
        progress(1.0)
        return result

    def _write_rasters(
        self,
        class_path: Path,
        confidence_path: Path | None,
        scratch: list[Path],
        timer: _Timer,
        stage: _StageProgress,
        is_cancelled: IsCancelled,
    ) -> None:
        """Inference into the class (and confidence) raster on the input's grid."""
        outputs = [create_class_raster(class_path, self.input_grid, self.meta.classes)]
        if confidence_path is not None:
            outputs.append(create_confidence_raster(confidence_path, self.input_grid))
        if not self.resampled:
            writer = BlockRowWriter(outputs, self.tiles.tile_height)
            self._infer(_ClassSink(writer, confidence_path is not None), writer, timer,
                        stage("tiles"), is_cancelled)
            return
        probability_path = _scratch_beside(class_path, "prob")
        scratch.append(probability_path)
        probabilities = create_geotiff(probability_path, self.source.grid, self.meta.num_classes)
        writer = BlockRowWriter([probabilities], self.tiles.tile_height, fill=0)
        self._infer(_ProbabilitySink(writer), writer, timer, stage("tiles"), is_cancelled)
        del writer, probabilities  # flushed and closed before it is read back
        with timer("resample"):
            self._resample_back(probability_path, outputs, stage("resample"), is_cancelled)

    def _infer(self, sink, writer: BlockRowWriter, timer: _Timer, progress: Progress,
               is_cancelled: IsCancelled) -> None:
        tiles = list(self.tiles)
        grid = self.tiles
        blender = StreamingBlender(grid, self.meta.num_classes, sink.emit, sink.rows_complete)
        self.tiles_run = 0
        index = 0
        while index < len(tiles):
            if is_cancelled():
                raise SegmentationCancelled("segmentation cancelled")
            masks, inputs = [], []
            with timer("read"):
                while index < len(tiles) and len(inputs) < self.predictor.batch_size:
                    tile = tiles[index]
                    index += 1
                    data, valid = self.source.read(tile.x, tile.y, grid.tile_width,
                                                   grid.tile_height)
                    if valid.any():  # all-nodata tiles skip the model
                        inputs.append(data)
                        masks.append(valid)
                    else:
                        masks.append(None)
            with timer("model"):
                probabilities = iter(self.predictor.predict(np.stack(inputs)) if inputs else [])
            self.tiles_run += len(inputs)
            written_before = writer.seconds
            with timer("blend"):
                for valid in masks:
                    blender.add(None if valid is None else next(probabilities), valid)
            del probabilities, inputs  # before the next batch is read and predicted
            timer.seconds["blend"] -= writer.seconds - written_before
            timer.seconds["write"] = writer.seconds
            self.tiles_done = index
            progress(index / len(tiles))
        writer.flush()
        timer.seconds["write"] = writer.seconds
        if self.tiles_run < len(tiles):
            self.log("info", f"{len(tiles) - self.tiles_run} of {len(tiles)} tiles hold only "
                             "nodata: skipped without running the model")

    def _resample_back(self, probability_path: Path, outputs: list[gdal.Dataset],
                       progress: Progress, is_cancelled: IsCancelled) -> None:
        """Probabilities warped (bilinear) from the model's grid back to the input's, one
        block-row at a time, to classes and confidence; nodata from the input itself."""
        warped = warp_onto(gdal.Open(os.fspath(probability_path)), self.input_grid, None)
        classes = list(range(1, self.meta.num_classes + 1))
        alpha = warped.GetRasterBand(warped.RasterCount)
        grid = self.input_grid
        rows = outputs[0].GetRasterBand(1).GetBlockSize()[1]
        for row in range(0, grid.height, rows):
            if is_cancelled():
                raise SegmentationCancelled("segmentation cancelled")
            height = min(rows, grid.height - row)
            scores = warped.ReadAsArray(0, row, grid.width, height, band_list=classes)
            scores = scores.reshape(len(classes), height, grid.width)
            invalid = ~(self.native.read_valid(0, row, grid.width, height)
                        & (alpha.ReadAsArray(0, row, grid.width, height) >= 128))
            planes = [scores.argmax(axis=0).astype(np.uint8)]
            if len(outputs) > 1:
                planes.append(np.rint(scores.max(axis=0) * (100 / _PROBABILITY_SCALE)).astype(
                    np.uint8))
            for dataset, plane in zip(outputs, planes, strict=True):
                plane[invalid] = NODATA
                dataset.GetRasterBand(1).WriteArray(plane, 0, row)
            progress((row + height) / grid.height)

    def _sieve(self, raw_path: Path, class_path: Path, min_area: float, progress: Progress,
               is_cancelled: IsCancelled) -> None:
        pixel_area = self.measure.mean_pixel_area()
        min_pixels = max(1, math.ceil(min_area / pixel_area - 1e-9))
        self.log("info", f"--min-area {min_area:g} {self.measure.unit} = {min_pixels} pixels: "
                         "smaller pieces are merged into their largest neighbour")
        raw = gdal.Open(os.fspath(raw_path))
        target = create_class_raster(class_path, self.input_grid, self.meta.classes)
        vectorize.sieve(raw.GetRasterBand(1), target.GetRasterBand(1), min_pixels,
                        progress=progress, is_cancelled=is_cancelled)

    def _tabulate(self, class_path: Path) -> tuple[list[ClassArea], int]:
        dataset = gdal.Open(os.fspath(class_path))
        band = dataset.GetRasterBand(1)
        pixels, areas = tabulate_class_areas(band, self.measure, self.meta.num_classes, NODATA)
        total_area = areas.sum()
        to_m2 = self.measure.square_metres_per_unit
        classes = [
            ClassArea(
                c.id, c.name, c.color, int(pixels[c.id]), float(areas[c.id]),
                None if to_m2 is None else float(areas[c.id] * to_m2),
                float(100.0 * areas[c.id] / total_area) if total_area > 0 else 0.0,
            )
            for c in self.meta.classes
        ]
        return classes, self.input_grid.width * self.input_grid.height - int(pixels.sum())

    def _polygons(self, class_path: Path, vector_path: Path, simplify: float | None,
                  progress: Progress, is_cancelled: IsCancelled) -> int:
        self.log("info", "making polygons" + (f" (simplified by {simplify:g})" if simplify else ""))
        return vectorize.vectorize_classes(
            class_path, vector_path, self.meta.classes, self.measure, simplify=simplify,
            progress=progress, is_cancelled=is_cancelled,
        )

    def _result(self, out_raster, out_confidence, out_vector, classes, nodata_pixels,
                polygons) -> SegmentResult:
        tiles = self.tiles
        return SegmentResult(
            out_raster=os.fspath(out_raster),
            out_confidence=None if out_confidence is None else os.fspath(out_confidence),
            out_vector=None if out_vector is None else os.fspath(out_vector),
            areas_json=os.fspath(areas_json_path(out_raster)),
            device=self.device,
            precision=self.predictor.precision,
            tiles=len(tiles),
            tiles_run=self.tiles_run,
            tiles_skipped=len(tiles) - self.tiles_run,
            tile_size=(tiles.tile_height, tiles.tile_width),
            overlap=tiles.overlap,
            batch_size=self.predictor.batch_size,
            tta=self.tta,
            passes_per_tile=self.predictor.passes_per_tile,
            input_gsd_m=self.input_gsd,
            model_gsd_m=self.meta.gsd_m,
            processing_gsd_m=self.processing_gsd,
            resampled=self.resampled,
            area_unit=self.measure.unit,
            classes=classes,
            nodata_pixels=nodata_pixels,
            polygons=polygons,
            warnings=list(self.warnings),
        )

    def _area_document(self, result: SegmentResult) -> dict[str, Any]:
        return {
            "raster": os.path.basename(result.out_raster),
            "model": os.path.basename(self.model_path),
            "area_unit": result.area_unit,
            "nodata_pixels": result.nodata_pixels,
            "classes": [asdict(c) for c in result.classes],
        }


def segment(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    model: str | os.PathLike[str] | ModelPackage,
    out_raster: str | os.PathLike[str],
    *,
    out_vector: str | os.PathLike[str] | None = None,
    out_confidence: str | os.PathLike[str] | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    device: str = "auto",
    tta: str = "none",
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    gsd: str | float = "auto",
    simplify: float | None = None,
    min_area: float | None = None,
    tile_offset: tuple[int, int] = (0, 0),
    wavelengths: Sequence[float] | None = None,
    progress: Progress | None = None,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
) -> SegmentResult:
    """Segment ``inputs`` (one raster, or several aligned onto the first's grid) with the
    model package ``model``; see :class:`Segmenter` and :meth:`Segmenter.run`.

    ``progress(fraction)`` is called as work advances, ``is_cancelled()`` between batches
    (true: outputs removed, :class:`SegmentationCancelled` raised), ``log(level, message)``
    with the plan and warnings (default: the ``landcover.segment`` logger). ``tile``,
    ``overlap`` and ``batch_size`` default to the model's (an overlap keeps the model's
    share of a ``tile`` given alone); ``tile_offset`` (x, y) shifts the tile grid, for
    studies of tiling effects such as the seam test. ``wavelengths`` (µm) overrides the
    optical band wavelengths of a wavelength-conditioned model.
    """
    segmenter = Segmenter(
        inputs, model, tile=tile, overlap=overlap, batch_size=batch_size, device=device, tta=tta,
        bands=bands, nodata=nodata, gsd=gsd, tile_offset=tile_offset, wavelengths=wavelengths,
        log=log,
    )
    return segmenter.run(
        out_raster, out_vector=out_vector, out_confidence=out_confidence, simplify=simplify,
        min_area=min_area, progress=progress, is_cancelled=is_cancelled,
    )
