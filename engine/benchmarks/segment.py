"""``landcover benchmark segment``: the segmentation pipeline end to end on large rasters.

For each size a generated RGB GeoTIFF (``SIZE x SIZE``, 1 m, tiled and compressed, cached
in ``--workdir``) is segmented in a fresh child process (``python -m
landcover.engine.benchmarks.segment CONFIG RESULT``), so each size's memory is its own.
The child reports megapixels per second end to end, the share of wall time spent
reading, in the model, blending, writing (with the area table) and making polygons, and
peak memory (resident set size) of the raster stages and of the polygon stage apart
(Linux: ``/proc/self/status`` VmHWM, reset between the stages through
``/proc/self/clear_refs``); ``+poly MB`` is the polygon stage's peak above the memory the
process held when it began.

The imagery has regions of a few land-cover-like colours with texture. Without
``--model``, the benchmark fits a ``unetmamba_tiny`` to that imagery for a few seconds
first: a random network's classes are per-pixel noise, which would turn the polygon stage
into a benchmark of noise; a fitted one gives regions, as a trained model does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from landcover.engine.errors import ConfigError

DEFAULT_SIZES = (2048, 8192)
SLOW_SIZE = 16384
# Land-cover-like colours of the generated imagery (water, grass, forest, bare, built).
PALETTE = np.array(
    [(40, 70, 110), (120, 160, 80), (40, 90, 40), (190, 170, 130), (150, 150, 160)], np.float32
)
BLOCK_ROWS = 512
WAVES_PER_CLASS = 6
# GDAL's block cache in the child, as `landcover segment` sets it.
GDAL_CACHE_BYTES = 128 * 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default_sizes = " ".join(map(str, DEFAULT_SIZES))
    parser.add_argument("--sizes", type=int, nargs="+", metavar="N",
                        help=f"raster sides in pixels (default: {default_sizes})")
    parser.add_argument("--slow", action="store_true", help=f"also run {SLOW_SIZE}x{SLOW_SIZE}")
    parser.add_argument("--model", metavar="FILE", help="model package (default: a fitted --arch)")
    parser.add_argument("--arch", default="unetmamba_tiny",
                        help="architecture fitted to the imagery when no --model is given")
    parser.add_argument("--fit-steps", type=int, default=250,
                        help="fitting steps for --arch (fewer leave speckled classes)")
    parser.add_argument("--tile", type=int, default=512, help="tile size")
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap")
    parser.add_argument("--batch", type=int, default=4, help="tiles per batch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--no-polygons", action="store_true", help="skip the polygon stage")
    parser.add_argument("--workdir", metavar="DIR",
                        help="where rasters are generated and kept (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


# ------------------------------------------------------------------------ imagery


def _waves(seed: int, classes: int) -> dict[str, np.ndarray]:
    """Random plane waves (wavelengths 150-1500 px) making one smooth field per class."""
    rng = np.random.default_rng(seed)
    shape = (classes, WAVES_PER_CLASS)
    angle = rng.uniform(0, np.pi, shape)
    frequency = 2 * np.pi / rng.uniform(150, 1500, shape)
    return {
        "fx": frequency * np.cos(angle),
        "fy": frequency * np.sin(angle),
        "phase": rng.uniform(0, 2 * np.pi, shape),
        "amplitude": rng.uniform(0.5, 1.0, shape),
    }


def generated_labels(waves: dict[str, np.ndarray], row0: int, rows: int, width: int):
    """Class of every pixel in rows ``row0 .. row0 + rows``: the largest of the smooth
    fields (sums of waves, evaluated separably: sin(a + b) = sin a cos b + cos a sin b)."""
    x = np.arange(width, dtype=np.float32)
    y = np.arange(row0, row0 + rows, dtype=np.float32)
    classes = waves["fx"].shape[0]
    fields = np.zeros((classes, rows, width), np.float32)
    for k in range(classes):
        for m in range(WAVES_PER_CLASS):
            ax = waves["fx"][k, m] * x
            by = waves["fy"][k, m] * y + waves["phase"][k, m]
            amplitude = waves["amplitude"][k, m]
            fields[k] += np.outer(np.cos(by) * amplitude, np.sin(ax))
            fields[k] += np.outer(np.sin(by) * amplitude, np.cos(ax))
    return fields.argmax(axis=0).astype(np.uint8)


def generated_image(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 (3, h, w): each class's colour plus texture."""
    image = PALETTE[labels].transpose(2, 0, 1)
    image += rng.normal(0, 12, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def generate_raster(path: Path, size: int, seed: int = 0) -> None:
    """A ``size`` x ``size`` RGB GeoTIFF (UTM 33N, 1 m) written a block of rows at a time."""
    from osgeo import gdal, osr

    gdal.UseExceptions()
    waves = _waves(seed, len(PALETTE))
    rng = np.random.default_rng(seed)
    partial = path.with_name(path.name + ".partial")
    dataset = gdal.GetDriverByName("GTiff").Create(
        str(partial), size, size, 3, gdal.GDT_Byte,
        ["TILED=YES", "COMPRESS=DEFLATE", "PREDICTOR=2", "BIGTIFF=IF_SAFER"],
    )
    dataset.SetGeoTransform((500_000.0, 1.0, 0.0, 5_000_000.0 + size, 0.0, -1.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    dataset.SetProjection(srs.ExportToWkt())
    for row0 in range(0, size, BLOCK_ROWS):
        rows = min(BLOCK_ROWS, size - row0)
        image = generated_image(generated_labels(waves, row0, rows, size), rng)
        dataset.WriteRaster(0, row0, size, rows, image.tobytes())
    dataset = None
    os.replace(partial, path)


# ------------------------------------------------------------------------ model


def fit_quickly(model, images: np.ndarray, labels: np.ndarray, *, steps: int, crop: int = 64,
                batch: int = 8, lr: float = 3e-3, seed: int = 0) -> None:
    """Fit ``model`` (train mode, in place) for ``steps`` AdamW steps on random crops of one
    normalised image (bands, h, w) and its labels (h, w); leaves it in eval mode.

    Seconds on a CPU: enough for classes that follow the image content, not a trained model.
    """
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
    model.train()
    for _ in range(steps):
        rows = rng.integers(0, images.shape[1] - crop + 1, batch)
        cols = rng.integers(0, images.shape[2] - crop + 1, batch)
        corners = list(zip(rows, cols, strict=True))
        x = torch.stack([x_all[:, r: r + crop, c: c + crop] for r, c in corners])
        y = torch.stack([y_all[r: r + crop, c: c + crop] for r, c in corners])
        output = model(x)
        logits = output[0] if isinstance(output, tuple) else output
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _fitted_package(path: Path, arch: str, steps: int, tile: int, overlap: int) -> None:
    from landcover.engine.modelfile import BandInfo, ClassInfo, ModelMeta, save_model_package
    from landcover.engine.models import create_model

    waves = _waves(0, len(PALETTE))
    labels = generated_labels(waves, 0, 512, 512)
    image = generated_image(labels, np.random.default_rng(1)).astype(np.float32)
    mean, std = 127.5, 63.75
    model = create_model(arch, num_classes=len(PALETTE), in_channels=3, aux_head=False)
    fit_quickly(model, (image - mean) / std, labels, steps=steps)
    names = ("water", "grass", "forest", "bare", "built")
    meta = ModelMeta.for_model(
        model,
        classes=[ClassInfo(i, n, tuple(int(c) for c in PALETTE[i])) for i, n in enumerate(names)],
        bands=[BandInfo(b, mean, std) for b in ("red", "green", "blue")],
        gsd_m=1.0, tile_size=tile, tile_overlap=overlap,
    )
    save_model_package(path, model, meta)


# ------------------------------------------------------------------------ child


def _rss(field: str = "VmHWM") -> int | None:
    """Peak (VmHWM) or current (VmRSS) resident set size in bytes, where /proc has it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _measure(config: dict[str, Any]) -> dict[str, Any]:
    """One size, in this (fresh) process."""
    from osgeo import gdal

    from landcover.engine.inference.segment import Segmenter
    from landcover.engine.inference.vectorize import vectorize_classes

    gdal.SetCacheMax(GDAL_CACHE_BYTES)
    segmenter = Segmenter(
        config["raster"], config["model"], tile=config["tile"], overlap=config["overlap"],
        batch_size=config["batch"], device=config["device"], log=lambda level, message: None,
    )
    tiles = segmenter.tiles
    # Warm-up outside the measurement (JIT compilation, allocator growth).
    warm = np.zeros((segmenter.predictor.batch_size, segmenter.source.num_bands,
                     tiles.tile_height, tiles.tile_width), np.float32)
    segmenter.predictor.predict(warm)
    del warm
    resettable = _reset_peak_rss()
    raster_start = _rss("VmRSS")
    result = segmenter.run(config["out_raster"])
    raster_peak = _rss()
    seconds = dict(result.seconds)
    polygons = polygon_start = polygon_peak = None
    if config["polygons"]:
        _reset_peak_rss()
        polygon_start = _rss("VmRSS")
        start = time.perf_counter()
        polygons = vectorize_classes(config["out_raster"], config["out_vector"],
                                     segmenter.meta.classes, segmenter.measure)
        seconds["polygonize"] = time.perf_counter() - start
        polygon_peak = _rss()
    return {
        "size": config["size"],
        "device": result.device,
        "tiles": result.tiles,
        "seconds": seconds,
        "raster_start_bytes": raster_start,
        "raster_peak_bytes": raster_peak,
        "polygon_start_bytes": polygon_start,
        "polygon_peak_bytes": polygon_peak,
        "peak_is_per_stage": resettable,
        "polygons": polygons,
    }


# ------------------------------------------------------------------------ parent


def _summarise(measured: dict[str, Any]) -> dict[str, Any]:
    seconds = measured["seconds"]
    stages = {
        "read": seconds.get("read", 0.0),
        "model": seconds.get("model", 0.0),
        "blend": seconds.get("blend", 0.0),
        "write": seconds.get("write", 0.0) + seconds.get("areas", 0.0),
        "polygonize": seconds.get("polygonize", 0.0),
    }
    wall = seconds["total"] + stages["polygonize"]
    megapixels = measured["size"] ** 2 / 1e6
    return {
        **measured,
        "megapixels": megapixels,
        "wall_seconds": wall,
        "megapixels_per_second": megapixels / wall,
        "shares": {name: value / wall for name, value in stages.items()},
        "not_model_share": 1.0 - stages["model"] / wall,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'size':>6} {'MP':>6} {'wall s':>8} {'MP/s':>6}  {'read':>5} {'model':>5} "
              f"{'blend':>5} {'write':>5} {'poly':>5} {'other':>5}  {'raster MB':>9} "
              f"{'poly MB':>8} {'+poly MB':>8} {'polygons':>9}")
    lines = [header]
    for row in rows:
        shares = row["shares"]
        mb = [row[k] / 2**20 if row[k] else math.nan
              for k in ("raster_peak_bytes", "polygon_peak_bytes", "polygon_start_bytes")]
        lines.append(
            f"{row['size']:>6} {row['megapixels']:>6.1f} {row['wall_seconds']:>8.1f} "
            f"{row['megapixels_per_second']:>6.2f}  "
            + " ".join(f"{100 * shares[k]:>4.1f}%" for k in
                       ("read", "model", "blend", "write", "polygonize"))
            + f" {100 * (1 - sum(shares.values())):>4.1f}%  {mb[0]:>9.0f} {mb[1]:>8.0f} "
            f"{mb[1] - mb[2]:>8.0f} {row['polygons'] if row['polygons'] is not None else '-':>9}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    sizes = list(args.sizes or DEFAULT_SIZES) + ([SLOW_SIZE] if args.slow else [])
    if any(size < 64 for size in sizes):
        raise ConfigError("--sizes: every size must be at least 64 pixels")
    with tempfile.TemporaryDirectory(prefix="landcover-bench-") as scratch:
        workdir = Path(args.workdir or scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        model = args.model
        if model is None:
            fitted = workdir / f"{args.arch}_fitted_{args.fit_steps}_{args.tile}_{args.overlap}.lcm"
            if not fitted.exists():
                print(f"fitting {args.arch} to the generated imagery ({args.fit_steps} steps)",
                      file=sys.stderr)
                _fitted_package(fitted, args.arch, args.fit_steps, args.tile, args.overlap)
            model = str(fitted)
        rows = []
        for size in sizes:
            raster = workdir / f"generated_{size}.tif"
            if not raster.exists():
                print(f"generating {raster}", file=sys.stderr)
                generate_raster(raster, size)
            config = {
                "size": size, "raster": str(raster), "model": model, "tile": args.tile,
                "overlap": args.overlap, "batch": args.batch, "device": args.device,
                "polygons": not args.no_polygons,
                "out_raster": str(workdir / f"classes_{size}.tif"),
                "out_vector": str(workdir / f"polygons_{size}.gpkg"),
            }
            config_path = workdir / f"config_{size}.json"
            result_path = workdir / f"result_{size}.json"
            config_path.write_text(json.dumps(config))
            print(f"segmenting {size}x{size} in a fresh process", file=sys.stderr)
            subprocess.run(
                [sys.executable, "-m", "landcover.engine.benchmarks.segment",
                 str(config_path), str(result_path)],
                check=True,
            )
            rows.append(_summarise(json.loads(result_path.read_text())))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows))
        if len(rows) > 1 and all(r["raster_peak_bytes"] for r in rows):
            growth = (rows[-1]["raster_peak_bytes"] - rows[0]["raster_peak_bytes"]) / 2**20
            print(f"raster-stage peak memory: {growth:+.0f} MB from {rows[0]['size']} to "
                  f"{rows[-1]['size']} px; device: {rows[0]['device']}")
    return 0


if __name__ == "__main__":
    config_file, result_file = sys.argv[1:3]
    Path(result_file).write_text(json.dumps(_measure(json.loads(Path(config_file).read_text()))))
