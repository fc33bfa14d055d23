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

``--compare`` times the models in this one process instead: each gets the same warm-up,
then timing rounds interleave the models (the order rotating each round), so a slow spell
of a shared machine slows all of them alike and the figures compare as ratios. Latencies
are given relative to ``unetformer`` when it is among the models (the field's usual
yardstick), else to the first model. Parameters, MACs and peak memory come first, from a
short child process per model (build, one forward pass, count), so each peak is again
the model's own. Without ``--models`` it takes every registered model but the ``*_tiny``
test variants; multi-modal models keep their builder's default modalities and get an
input with as many bands as they take.
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
# The baseline of --compare when it is measured.
YARDSTICK = "unetformer"
# Registered names ending so are small test models: --compare skips them unless named.
TEST_VARIANT_SUFFIX = "_tiny"


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
    parser.add_argument(
        "--compare",
        action="store_true",
        help="time the models in one process with interleaved rounds and report latency "
        f"relative to {YARDSTICK} (if measured) or the first model, beside parameters, MACs "
        "and peak memory from a short child process per model (default models: all but "
        f"the *{TEST_VARIANT_SUFFIX} test variants)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _check_arguments(args: argparse.Namespace) -> list[str]:
    """Validate in the parent, before any child starts; returns the model names."""
    import torch

    from landcover.engine.models import list_models

    known = list_models()
    names = args.models or [
        name for name in known if not (args.compare and name.endswith(TEST_VARIANT_SUFFIX))
    ]
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
    if args.compare:
        report = compare(names, _shared_config(args))
    else:
        results, failures = _in_children(
            "measure",
            [{"model": name, **_shared_config(args), "fallback": not args.no_fallback}
             for name in names],
        )
        report = {"models": results, "failures": failures}
    if args.json:
        print(json.dumps(report, indent=2))
    elif report["models"]:
        print(format_comparison(report) if args.compare else format_table(report["models"]))
    for failure in report["failures"]:
        print(f"landcover: error: {failure}", file=sys.stderr)
    return 1 if report["failures"] else 0


def _shared_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "size": args.size,
        "batch": args.batch,
        "in_channels": args.in_channels,
        "classes": args.classes,
        "device": args.device,
        "repeats": args.repeats,
        "backend": args.backend,
    }


def _in_children(
    task: str, configs: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run ``task`` (a key of ``CHILD_TASKS``) for each config in its own child process;
    returns the results and the one-line errors of the children that failed."""
    verb, _ = CHILD_TASKS[task]
    results, failures = [], []
    for config in configs:
        print(f"{verb} {config['model']} in a child process ...", file=sys.stderr, flush=True)
        try:
            results.append(_run_child(task, config))
        except LandcoverError as error:
            failures.append(str(error))
    return results, failures


def _run_child(task: str, config: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="landcover-bench-") as folder:
        result_path = Path(folder) / "result.json"
        command = [sys.executable, "-m", __name__, task, json.dumps(config), str(result_path)]
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


def _setup_line(report: dict[str, Any], bands: object) -> str:
    return (
        f"input {report['batch']}x{bands}x{report['size']}x{report['size']} "
        f"fp32, {report['classes']} classes, device {report['device']} "
        f"({report['threads']} threads), torch {report['torch']}"
    )


def _size_cells(result: dict[str, Any]) -> tuple[str, str, str]:
    """Parameters (train, deploy) and MACs of one model, as table cells."""
    return (
        f"{result['params_train'] / 1e6:.2f}M",
        f"{result['params_deploy'] / 1e6:.2f}M",
        f"{result['counted_gmacs']:.4g}+{result['scan_gmacs']:.4g}={result['total_gmacs']:.4g}",
    )


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as lines, each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def format_table(results: list[dict[str, Any]]) -> str:
    first = results[0]
    lines = [
        f"{_setup_line(first, first['in_channels'])}, "
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
            *_size_cells(r),
            f"{r['gflops']:.4g}",
            _number(r["latency_ms"]),
            f"{r['megapixels_per_s']:.3g}",
            f"{r['peak_memory_mb']:.0f}",
            f"{r['conv_gmacs_per_s']:.3g}",
            f"{r['flop_limit_ratio']:.3g} ({r['scan_backend']})",
            "-" if fallback is None else f"{fallback['flop_limit_ratio']:.3g}",
        ))
    return "\n".join(lines + _aligned(rows))


# --------------------------------------------------------------------------- compare


def _is_multimodal(name: str) -> bool:
    from landcover.engine.models import model_options

    return "modality_channels" in model_options(name)


def compare(names: list[str], config: dict[str, Any]) -> dict[str, Any]:
    """Parameters, MACs and peak memory of each model from a child process (``profile``),
    then the latency of those that built, measured in this process: one warm-up pass each,
    then ``repeats`` rounds that run every model once, the starting model rotating per
    round. Multi-modal models are built with their builder's default bands."""
    import torch

    from landcover.engine.ops import use_scan_backend

    configs = {
        name: {
            "model": name,
            **config,
            "in_channels": None if _is_multimodal(name) else config["in_channels"],
        }
        for name in names
    }
    profiles, failures = _in_children("profile", list(configs.values()))
    device = torch.device(config["device"])
    report = {
        **config,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "scan_backend": _scan_backend_for(config["backend"], device),
        "peak_memory_kind": profiles[0]["peak_memory_kind"] if profiles else None,
        "baseline": None,
        "models": [],
        "failures": failures,
    }
    names = [profile["model"] for profile in profiles]
    if not names:
        return report

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    models, inputs = {}, {}
    for name in names:
        print(f"building {name} ...", file=sys.stderr, flush=True)
        models[name], _, _ = _deploy_model(name, configs[name], device)
        inputs[name] = _model_input(models[name], config, device)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with use_scan_backend(config["backend"]), torch.no_grad():
        for name in names:
            print(f"warming up {name} ...", file=sys.stderr, flush=True)
            models[name](inputs[name])
        print(f"{config['repeats']} interleaved timing rounds ...", file=sys.stderr, flush=True)
        for round_index in range(config["repeats"]):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                seconds[name].append(_median_seconds(
                    lambda model=models[name], x=inputs[name]: model(x), 1, synchronize
                ))
    baseline = YARDSTICK if YARDSTICK in names else names[0]
    latency = {name: statistics.median(times) for name, times in seconds.items()}
    pixels = config["batch"] * config["size"] ** 2
    report["baseline"] = baseline
    report["models"] = [
        {
            **{key: value for key, value in profile.items() if key != "peak_memory_kind"},
            "latency_ms": latency[name] * 1e3,
            "latency_rounds_ms": [t * 1e3 for t in seconds[name]],
            "megapixels_per_s": pixels / 1e6 / latency[name],
            "relative_latency": latency[name] / latency[baseline],
        }
        for name, profile in zip(names, profiles, strict=True)
    ]
    return report


def format_comparison(report: dict[str, Any]) -> str:
    bands = {r["in_channels"] for r in report["models"]}
    lines = [
        f"{_setup_line(report, bands.pop() if len(bands) == 1 else 'C')}, "
        f"{report['scan_backend']} scan",
        f"latency: in one process, a warm-up pass per model, then median of "
        f"{report['repeats']} rounds that run every model once (interleaved)",
        f"peak MB: {report['peak_memory_kind']} of a child process that builds the model and "
        "runs one forward pass",
        "",
    ]
    header = (
        "model", "bands", "params train", "params deploy", "GMACs counted+scan=total",
        "latency ms", "MP/s", f"x {report['baseline']}", "peak MB",
    )
    rows = [header]
    for r in report["models"]:
        rows.append((
            r["model"],
            str(r["in_channels"]),
            *_size_cells(r),
            _number(r["latency_ms"]),
            f"{r['megapixels_per_s']:.3g}",
            f"{r['relative_latency']:.2f}",
            f"{r['peak_memory_mb']:.0f}",
        ))
    return "\n".join(lines + _aligned(rows))


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


def _memory_mark(device: Any) -> int:
    """Start counting peak memory on ``device``: the baseline that ``_peak_memory`` takes
    off (resets CUDA's peak statistics)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return _rss_bytes()


def _peak_memory(device: Any, mark: int) -> dict[str, Any]:
    """Peak memory since ``_memory_mark`` returned ``mark``, and how it was measured."""
    import torch

    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(), "cuda max_memory_allocated"
    else:
        peak, kind = _peak_rss_bytes(), "peak RSS increase"
    return {"peak_memory_mb": (peak - mark) / 2**20, "peak_memory_kind": kind}


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


def _deploy_model(name: str, config: dict[str, Any], device: Any) -> tuple[Any, int, int]:
    """The deploy form of ``name`` on ``device`` (seeded weights), and the parameter
    counts of its training and deploy forms. ``config["in_channels"]`` None keeps the
    builder's default bands."""
    import torch

    from landcover.engine.models import create_model, to_deploy

    torch.manual_seed(0)
    bands = {} if config["in_channels"] is None else {"in_channels": config["in_channels"]}
    train_model = create_model(name, num_classes=config["classes"], **bands)
    params_train = sum(p.numel() for p in train_model.parameters())
    model = to_deploy(train_model).to(device)
    del train_model
    return model, params_train, sum(p.numel() for p in model.parameters())


def _model_input(model: Any, config: dict[str, Any], device: Any) -> Any:
    """A random batch of ``config``'s size with as many bands as ``model`` takes."""
    import torch

    shape = (config["batch"], model.in_channels, config["size"], config["size"])
    return torch.randn(shape, device=device)


def _mac_figures(model: Any, inputs: Any) -> dict[str, float]:
    """Multiply-adds of one forward pass on a batch shaped like ``inputs``, in G."""
    from landcover.engine.flops import count_macs

    macs = count_macs(model, inputs.shape)
    return {
        "counted_gmacs": macs["counted_macs"] / 1e9,
        "scan_gmacs": macs["scan_macs"] / 1e9,
        "total_gmacs": macs["total_macs"] / 1e9,
        "gflops": 2 * macs["total_macs"] / 1e9,
    }


def profile(config: dict[str, Any]) -> dict[str, Any]:
    """Parameters, peak memory (building the model and one forward pass) and MACs of one
    model, measured in this process (a child's work for ``--compare``)."""
    import torch

    from landcover.engine.ops import use_scan_backend

    device = torch.device(config["device"])
    mark = _memory_mark(device)
    model, params_train, params_deploy = _deploy_model(config["model"], config, device)
    inputs = _model_input(model, config, device)
    scan_backend = _scan_backend_for(config["backend"], device)
    _progress(config, f"one forward pass ({scan_backend} scan), counting MACs")
    with use_scan_backend(config["backend"]), torch.no_grad():
        model(inputs)
    memory = _peak_memory(device, mark)
    return {
        "model": config["model"],
        "in_channels": model.in_channels,
        "params_train": params_train,
        "params_deploy": params_deploy,
        **_mac_figures(model, inputs),
        **memory,
    }


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Measure one model in this process (the child's work)."""
    import torch

    from landcover.engine.ops import use_scan_backend

    device = torch.device(config["device"])

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    mark = _memory_mark(device)
    model, params_train, params_deploy = _deploy_model(config["model"], config, device)
    inputs = _model_input(model, config, device)

    def forward() -> None:
        with torch.no_grad():
            model(inputs)

    scan_backend = _scan_backend_for(config["backend"], device)
    _progress(config, f"warm-up and {config['repeats']} timed forward passes ({scan_backend} scan)")
    with use_scan_backend(config["backend"]):
        forward()  # warm-up: kernel compilation, allocator caches
        latency = _median_seconds(forward, config["repeats"], synchronize)
    memory = _peak_memory(device, mark)

    _progress(config, "counting MACs, timing the reference convolution")
    macs = _mac_figures(model, inputs)
    conv_rate = _reference_conv_rate(device, synchronize)

    def ratio(seconds: float) -> float:
        return seconds / (macs["total_gmacs"] * 1e9 / conv_rate)

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
        **macs,
        "latency_ms": latency * 1e3,
        "megapixels_per_s": pixels / 1e6 / latency,
        **memory,
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


# what a child process can be asked to do: name -> (progress verb, function of the config)
CHILD_TASKS = {"measure": ("measuring", measure), "profile": ("profiling", profile)}


def _child_main(argv: list[str]) -> int:
    from landcover.engine.runtime import keep_freed_memory

    keep_freed_memory()  # run the model as the engine's command line runs it
    task, config_json, result_path = argv
    _, work = CHILD_TASKS[task]
    result = work(json.loads(config_json))
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
