"""``landcover benchmark models``: parameters, MACs, latency, throughput and memory per model.

Each model is measured in a fresh child process (``python -m
landcover.engine.benchmarks.models CONFIG RESULT``), so its peak memory is its own and
not what earlier models left behind. The child also times a plain 3x3 convolution
(64 -> 64 channels on a 1x64x256x256 fp32 input) to learn the rate R (MACs per second)
that this machine reaches on dense convolution; the FLOP-limit ratio is

    forward time / (total MACs / R)

i.e. how many times slower the model runs than a network of plain convolutions with the
same MAC count would. 1.0 means the model is as compute-efficient as dense convolution.
The ratio is also given with the pure-PyTorch scan (what a user without numba or
mamba-ssm gets), from a single forward pass since that path is the slow one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from landcover.engine.errors import ConfigError, LandcoverError

INPUT_MULTIPLE = 32
REFERENCE_CONV = {"channels": 64, "kernel": 3, "height": 256, "width": 256}
REFERENCE_CONV_REPEATS = 5
FALLBACK_BACKEND = "torch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", nargs="+", metavar="NAME", help="models to measure (default: all registered)"
    )
    parser.add_argument(
        "--size", type=int, default=1024, help="input height and width (multiple of 32)"
    )
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    parser.add_argument("--in-channels", type=int, default=3, help="input bands")
    parser.add_argument(
        "--classes", type=int, default=6, help="output classes (6, as for Vaihingen)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed forward passes (median is reported)"
    )
    parser.add_argument(
        "--backend",
        default="auto",
        help="selective scan backend: auto (numba on CPU, mamba_ssm on CUDA when installed, "
        "else torch), numba, torch, mamba_ssm or reference",
    )
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        help=f"skip timing the pure-PyTorch scan ({FALLBACK_BACKEND!r}) for comparison",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _check_arguments(args: argparse.Namespace) -> list[str]:
    """Validate in the parent, before any child starts; returns the model names."""
    import torch

    from landcover.engine.models import list_models

    known = list_models()
    names = args.models or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown model {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    if args.size <= 0 or args.size % INPUT_MULTIPLE:
        raise ConfigError(f"--size {args.size}: must be a positive multiple of {INPUT_MULTIPLE}")
    for option, value in (("--batch", args.batch), ("--repeats", args.repeats),
                          ("--classes", args.classes), ("--in-channels", args.in_channels)):
        if value < 1:
            raise ConfigError(f"{option} {value}: must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is available here; use --device cpu")
    _scan_backend_for(args.backend, torch.device(args.device))  # one-line error if unusable
    return names


def _scan_backend_for(requested: str, device: Any) -> str:
    """The backend ``ss2d_scan`` will run with ``use_scan_backend(requested)`` on ``device``."""
    from landcover.engine.ops import resolve_scan_backend

    return resolve_scan_backend(device, requested)


def run(args: argparse.Namespace) -> int:
    names = _check_arguments(args)
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    for name in names:
        config = {
            "model": name,
            "size": args.size,
            "batch": args.batch,
            "in_channels": args.in_channels,
            "classes": args.classes,
            "device": args.device,
            "repeats": args.repeats,
            "backend": args.backend,
            "fallback": not args.no_fallback,
        }
        print(f"measuring {name} in a child process ...", file=sys.stderr, flush=True)
        try:
            results.append(_run_child(config))
        except LandcoverError as error:
            failures.append(str(error))
    if args.json:
        print(json.dumps({"models": results, "failures": failures}, indent=2))
    elif results:
        print(format_table(results))
    for failure in failures:
        print(f"landcover: error: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _run_child(config: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="landcover-bench-") as folder:
        result_path = Path(folder) / "result.json"
        command = [sys.executable, "-m", __name__, json.dumps(config), str(result_path)]
        completed = subprocess.run(command, check=False)
        if completed.returncode != 0 or not result_path.exists():
            how = (
                f"was killed by signal {-completed.returncode} (out of memory?)"
                if completed.returncode < 0
                else f"failed with exit status {completed.returncode}"
            )
            raise LandcoverError(
                f"benchmark of {config['model']} {how}; see the messages above, or try a "
                "smaller --size or --batch"
            )
        return json.loads(result_path.read_text())


# --------------------------------------------------------------------------- report


def _number(value: float) -> str:
    """Three significant digits, without an exponent for large values."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def format_table(results: list[dict[str, Any]]) -> str:
    first = results[0]
    lines = [
        f"input {first['batch']}x{first['in_channels']}x{first['size']}x{first['size']} "
        f"fp32, {first['classes']} classes, device {first['device']} "
        f"({first['threads']} threads), torch {first['torch']}, "
        f"latency: median of {first['repeats']} after a warm-up "
        f"({FALLBACK_BACKEND} scan: one run)",
        "FLOP-limit ratio = forward time / (total MACs / R), R = MAC rate of a 3x3 conv "
        "64->64 on 1x64x256x256 in the same process (1.0 = as fast as dense convolution)",
        "",
    ]
    header = (
        "model", "params train", "params deploy", "GMACs counted+scan=total", "GFLOPs",
        "latency ms", "MP/s", "peak MB", "R GMAC/s", "ratio (scan)", "ratio torch scan",
    )
    rows = [header]
    for r in results:
        fallback = r["fallback"]
        rows.append((
            r["model"],
            f"{r['params_train'] / 1e6:.2f}M",
            f"{r['params_deploy'] / 1e6:.2f}M",
            f"{r['counted_gmacs']:.4g}+{r['scan_gmacs']:.4g}={r['total_gmacs']:.4g}",
            f"{r['gflops']:.4g}",
            _number(r["latency_ms"]),
            f"{r['megapixels_per_s']:.3g}",
            f"{r['peak_memory_mb']:.0f}",
            f"{r['conv_gmacs_per_s']:.3g}",
            f"{r['flop_limit_ratio']:.3g} ({r['scan_backend']})",
            "-" if fallback is None else f"{fallback['flop_limit_ratio']:.3g}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- child


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; else the peak so far)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes, Linux: KiB


def _progress(config: dict[str, Any], step: str) -> None:
    print(f"  {config['model']}: {step} ...", file=sys.stderr, flush=True)


def _median_seconds(function: Any, repeats: int, synchronize: Any) -> float:
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        function()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Measure one model in this process (the child's work)."""
    import torch

    from landcover.engine.flops import count_macs
    from landcover.engine.models import create_model, to_deploy
    from landcover.engine.ops import use_scan_backend

    device = torch.device(config["device"])
    cuda = device.type == "cuda"

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    shape = (config["batch"], config["in_channels"], config["size"], config["size"])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        memory_before = torch.cuda.memory_allocated()
    else:
        memory_before = _rss_bytes()

    torch.manual_seed(0)
    train_model = create_model(
        config["model"], num_classes=config["classes"], in_channels=config["in_channels"]
    )
    params_train = sum(p.numel() for p in train_model.parameters())
    model = to_deploy(train_model).to(device)
    del train_model
    params_deploy = sum(p.numel() for p in model.parameters())
    inputs = torch.randn(shape, device=device)

    def forward() -> None:
        with torch.no_grad():
            model(inputs)

    scan_backend = _scan_backend_for(config["backend"], device)
    _progress(config, f"warm-up and {config['repeats']} timed forward passes ({scan_backend} scan)")
    with use_scan_backend(config["backend"]):
        forward()  # warm-up: kernel compilation, allocator caches
        latency = _median_seconds(forward, config["repeats"], synchronize)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - memory_before
    else:
        peak = _peak_rss_bytes() - memory_before

    _progress(config, "counting MACs, timing the reference convolution")
    macs = count_macs(model, shape)
    conv_rate = _reference_conv_rate(device, synchronize)
    total_macs = macs["total_macs"]

    def ratio(seconds: float) -> float:
        return seconds / (total_macs / conv_rate)

    fallback = None
    if config["fallback"]:
        if scan_backend == FALLBACK_BACKEND:
            fallback_latency = latency
        else:
            # one run: this path has nothing to compile, and it is the slow one
            _progress(config, f"one forward pass with the {FALLBACK_BACKEND} scan (slower)")
            with use_scan_backend(FALLBACK_BACKEND):
                fallback_latency = _median_seconds(forward, 1, synchronize)
        fallback = {
            "backend": FALLBACK_BACKEND,
            "latency_ms": fallback_latency * 1e3,
            "flop_limit_ratio": ratio(fallback_latency),
        }

    pixels = config["batch"] * config["size"] ** 2
    return {
        **config,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "scan_backend": scan_backend,
        "params_train": params_train,
        "params_deploy": params_deploy,
        "counted_gmacs": macs["counted_macs"] / 1e9,
        "scan_gmacs": macs["scan_macs"] / 1e9,
        "total_gmacs": total_macs / 1e9,
        "gflops": 2 * total_macs / 1e9,
        "latency_ms": latency * 1e3,
        "megapixels_per_s": pixels / 1e6 / latency,
        "peak_memory_mb": peak / 2**20,
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "peak RSS increase",
        "conv_gmacs_per_s": conv_rate / 1e9,
        "flop_limit_ratio": ratio(latency),
        "fallback": fallback,
    }


def _reference_conv_rate(device: Any, synchronize: Any) -> float:
    """MACs per second of a plain 3x3 convolution, 64 -> 64 channels, on 1x64x256x256."""
    import torch

    channels, kernel = REFERENCE_CONV["channels"], REFERENCE_CONV["kernel"]
    height, width = REFERENCE_CONV["height"], REFERENCE_CONV["width"]
    conv = torch.nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False)
    conv = conv.to(device).eval()
    inputs = torch.randn(1, channels, height, width, device=device)

    def forward() -> None:
        with torch.no_grad():
            conv(inputs)

    forward()
    seconds = _median_seconds(forward, REFERENCE_CONV_REPEATS, synchronize)
    return channels * channels * kernel * kernel * height * width / seconds


def _child_main(argv: list[str]) -> int:
    from landcover.engine.runtime import keep_freed_memory

    keep_freed_memory()  # run the model as the engine's command line runs it
    config_json, result_path = argv
    result = measure(json.loads(config_json))
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
