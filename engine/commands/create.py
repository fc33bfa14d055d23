"""``landcover create``: write an untrained (or encoder-initialised) model package."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from landcover.engine.errors import ConfigError
from landcover.engine.modelfile import BandInfo, ModalityInfo, ModelMeta
from landcover.engine.presets import (
    PRESETS,
    ClassPreset,
    default_band,
    default_band_names,
    generic_classes,
    resolve_class_spec,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch", required=True, help="architecture, e.g. unetmamba (a wrong name lists all)"
    )
    parser.add_argument(
        "--classes",
        required=True,
        metavar="N|PRESET",
        help=f"number of classes, or a preset: {', '.join(PRESETS)} "
        "(class names, colours, GSD and bands of that dataset)",
    )
    parser.add_argument("--out", required=True, type=Path, help="model package file to write")
    parser.add_argument(
        "--in-channels", type=int, help="number of input bands (default: from --bands or 3)"
    )
    parser.add_argument(
        "--bands",
        help="comma-separated band names in input order, e.g. red,green,blue,nir "
        "(red/green/blue get ImageNet statistics, other bands 127.5 +- 63.75)",
    )
    parser.add_argument("--mean", help="comma-separated per-band mean, overriding the default")
    parser.add_argument("--std", help="comma-separated per-band std, overriding the default")
    parser.add_argument("--gsd", type=float, help="ground sample distance in metres")
    parser.add_argument("--tile", type=int, default=512, help="recommended tile size (pixels)")
    parser.add_argument("--overlap", type=int, default=64, help="recommended tile overlap")
    parser.add_argument(
        "--encoder-weights", type=Path, help="initialise the encoder from this weights file"
    )
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="architecture option (repeatable; VALUE in JSON, e.g. embed_dim=32 or "
        "depths=[2,2,2,2])",
    )
    parser.add_argument(
        "--modalities", metavar="NAME:BANDS,...",
        help="multi-modal models: the input groups in band order, e.g. optical:13,sar:2 "
        "(one input raster per modality when segmenting)",
    )
    parser.add_argument("--half", action="store_true", help="store the weights as float16")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the initial weights")


def _floats(option: str, text: str | None, count: int) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give comma-separated numbers") from None
    if len(values) != count:
        raise ConfigError(f"{option} has {len(values)} values for {count} bands")
    return values


def _bands(args: argparse.Namespace, preset: ClassPreset | None) -> list[BandInfo]:
    if args.bands is not None:
        names = [n.strip() for n in args.bands.split(",")]
        if any(not n for n in names):
            raise ConfigError(f"--bands {args.bands!r}: band names must not be empty")
        bands = [default_band(n) for n in names]
    else:
        count = args.in_channels if args.in_channels is not None else 3
        if preset is not None and count == len(preset.bands):
            bands = list(preset.bands)
        else:
            bands = [default_band(n) for n in default_band_names(count)]
    if args.in_channels is not None and args.in_channels != len(bands):
        raise ConfigError(
            f"--in-channels {args.in_channels} does not match the {len(bands)} --bands given"
        )
    if len(bands) < 1:
        raise ConfigError("--in-channels must be at least 1")
    means = _floats("--mean", args.mean, len(bands))
    stds = _floats("--std", args.std, len(bands))
    return [
        BandInfo(
            band.name,
            band.mean if means is None else means[index],
            band.std if stds is None else stds[index],
            band.wavelength_um,
        )
        for index, band in enumerate(bands)
    ]


def _arch_options(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r}: write KEY=VALUE")
        try:
            options[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            options[key.strip()] = text
    return options


def _modalities(text: str | None, bands: list[BandInfo]) -> list[ModalityInfo] | None:
    """``name:count,...`` -> modalities grouping the bands in order."""
    if text is None:
        return None
    groups = []
    for part in text.split(","):
        name, sep, count = part.partition(":")
        if not sep or not name.strip() or not count.strip().isdigit() or int(count) < 1:
            raise ConfigError(f"--modalities {text!r}: write NAME:BANDS,... e.g. optical:3,sar:2")
        groups.append((name.strip(), int(count)))
    if sum(count for _, count in groups) != len(bands):
        raise ConfigError(
            f"--modalities {text!r} groups {sum(c for _, c in groups)} bands, the model has "
            f"{len(bands)}; give --bands or --in-channels to match"
        )
    names, start, result = [b.name for b in bands], 0, []
    for name, count in groups:
        result.append(ModalityInfo(name, tuple(names[start: start + count])))
        start += count
    return result


def run(args: argparse.Namespace) -> int:
    spec = resolve_class_spec(args.classes)
    preset = spec if isinstance(spec, ClassPreset) else None
    classes = preset.classes if preset is not None else generic_classes(spec)
    bands = _bands(args, preset)
    gsd = args.gsd if args.gsd is not None else (preset.gsd_m if preset else None)

    import torch

    from landcover.engine.modelfile import save_model_package
    from landcover.engine.models import (
        create_model,
        list_models,
        load_encoder_weights,
        model_options,
    )

    if args.arch not in list_models():
        known = ", ".join(list_models())
        raise ConfigError(f"--arch {args.arch!r}: unknown; choose one of {known}")
    options = _arch_options(args.option)
    modalities = _modalities(args.modalities, bands)
    if modalities is not None:
        accepted = model_options(args.arch)
        if "modality_channels" not in accepted:
            raise ConfigError(f"--modalities: {args.arch} is not a multi-modal model")
        options.setdefault("modality_channels", [len(m.bands) for m in modalities])
        if "modalities" in accepted:
            options.setdefault("modalities", [m.name for m in modalities])
    torch.manual_seed(args.seed)
    model = create_model(
        args.arch, num_classes=len(classes), in_channels=len(bands), **options
    )
    training: dict[str, object] = {"state": "untrained", "seed": args.seed}
    if preset is not None:
        training["class_preset"] = preset.name
    if args.encoder_weights is not None:
        load_encoder_weights(model, args.encoder_weights)
        training["state"] = "encoder initialised"
        training["encoder_weights"] = args.encoder_weights.name
    meta = ModelMeta.for_model(
        model,
        classes=classes,
        bands=bands,
        gsd_m=gsd,
        tile_size=args.tile,
        tile_overlap=args.overlap,
        modalities=modalities,
        training=training,
    )
    save_model_package(args.out, model, meta, half=args.half)

    from landcover.engine.modelfile import inspect_model_package

    info = inspect_model_package(args.out)
    print(
        f"wrote {args.out}: {meta.arch}, {meta.num_classes} classes"
        f"{f' ({preset.name})' if preset else ''}, bands {','.join(meta.band_names)}, "
        f"{info.parameter_count / 1e6:.2f}M parameters, "
        f"{'float16' if args.half else 'float32'}, {info.file_bytes / 1e6:.1f} MB, "
        f"{training['state']}"
    )
    return 0
