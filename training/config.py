"""Training configuration: one YAML file per model and dataset, plus command-line overrides.

A config has five sections; every key is checked against the defaults below, so a typo
fails at start with one line instead of being silently ignored:

- ``model``: ``name`` (a registered architecture), ``options`` (its keyword arguments),
  ``encoder_weights`` (optional ImageNet checkpoint for the encoder).
- ``data``: ``layout`` and the layout's own keys (see ``training.datasets``), plus the
  sampling and augmentation keys listed in ``DATA_DEFAULTS``.
- ``loss``: ``name`` (see ``engine.losses.LOSSES``) and its keyword arguments.
- ``optim``: optimiser and learning-rate schedule.
- ``trainer``: epochs or steps, devices, precision, seed, checkpointing, logging.
- ``export``: what goes into the exported package besides weights (GSD, tile size).

Overrides are ``section.key=value`` strings; the value is parsed as YAML
(``optim.lr=1e-4``, ``trainer.devices=2``, ``data.crop_size=256``).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from landcover.engine.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string (it wants ``1.0e-4``); learning rates are
    written that way, so exponent floats without a dot are floats here."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds no Python objects


DATA_DEFAULTS: dict[str, Any] = {
    "layout": None,
    "batch_size": 8,
    "val_batch_size": 1,
    "num_workers": 0,
    "crop_size": 512,
    # Random scale: a [low, high] range, or a list of discrete factors.
    "scale": [0.75, 1.0, 1.25, 1.5],
    "flip": True,
    "rotate90": True,
    "mosaic_p": 0.25,
    # Random crops per epoch (default: one per training image).
    "samples_per_epoch": None,
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"name": None, "options": {}, "encoder_weights": None},
    "data": DATA_DEFAULTS,
    "loss": {"name": "unetmamba"},
    "optim": {
        "name": "adamw",
        "lr": 6e-4,
        "weight_decay": 2.5e-4,
        # Learning rate for the encoder's parameters (pretrained encoders get less); null: lr.
        "encoder_lr": None,
        # cosine | cosine_restarts | poly | constant; stepped every optimiser step.
        "schedule": "cosine",
        "warmup_steps": 0,
        # cosine_restarts: first period and growth, in epochs (as published).
        "restart_epochs": 15,
        "restart_mult": 2,
        "poly_power": 0.9,
        "min_lr": 1e-6,
    },
    "trainer": {
        "max_epochs": 100,
        "max_steps": -1,
        "accelerator": "auto",
        "devices": "auto",
        "num_nodes": 1,
        "strategy": "auto",
        # auto: bf16/16-mixed on a GPU, 32-true on CPU.
        "precision": "auto",
        "gradient_clip_val": 1.0,
        "accumulate_grad_batches": 1,
        "seed": 42,
        "check_val_every_n_epoch": 1,
        "val_check_interval": None,
        "checkpoint_every_n_steps": 50,
        "log_every_n_steps": 10,
        "limit_val_batches": None,
        "progress_bar": True,
    },
    "export": {"gsd_m": None, "tile_size": 512, "tile_overlap": 64, "description": None},
}

# Sections whose keys are free-form (handed on to a layout or a loss) besides the known ones.
_OPEN_SECTIONS = {"data", "loss"}
_PATH_KEYS = (("data", "root"), ("model", "encoder_weights"))


def _merge_section(name: str, defaults: Mapping[str, Any], given: Any) -> dict[str, Any]:
    if not isinstance(given, Mapping):
        raise ConfigError(f"config: section {name} must be a mapping, got {given!r}")
    unknown = set(given) - set(defaults)
    if unknown and name not in _OPEN_SECTIONS:
        raise ConfigError(
            f"config: unknown key {name}.{sorted(unknown)[0]}; "
            f"known keys: {', '.join(sorted(defaults))}"
        )
    return {**copy.deepcopy(dict(defaults)), **copy.deepcopy(dict(given))}


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``config`` with each ``section.key=value`` override set (values parsed as YAML)."""
    config = copy.deepcopy(config)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r}: write section.key=value")
        try:
            value = _load_yaml(text)
        except yaml.YAMLError:
            raise ConfigError(f"override {override!r}: the value is not valid YAML") from None
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return config


def _absolute_paths(config: dict[str, Any], base_dir: str | os.PathLike[str]) -> None:
    for section, key in _PATH_KEYS:
        value = config.get(section, {}).get(key) if isinstance(config.get(section), dict) else None
        if isinstance(value, str):
            config[section][key] = os.path.normpath(
                os.path.join(base_dir, os.path.expanduser(value))
            )


def resolve_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in and every key checked; relative paths made absolute (against the
    working directory)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config: the file must hold a YAML mapping of sections")
    unknown = set(raw) - set(DEFAULTS)
    if unknown:
        raise ConfigError(
            f"config: unknown section {sorted(unknown)[0]!r}; sections: {', '.join(DEFAULTS)}"
        )
    config = {
        name: _merge_section(name, defaults, raw.get(name, {}))
        for name, defaults in DEFAULTS.items()
    }
    if not isinstance(config["model"]["options"], Mapping):
        raise ConfigError("config: model.options must be a mapping of architecture options")
    if not config["model"]["name"]:
        raise ConfigError("config: model.name is required (a registered architecture)")
    if not config["data"]["layout"]:
        raise ConfigError("config: data.layout is required (e.g. folder, loveda, isprs)")
    _absolute_paths(config, os.getcwd())
    return config


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML config, apply overrides, fill defaults and check every key.

    Paths in the file are relative to the file's folder; paths in overrides to the working
    directory.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = _load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the file must hold a YAML mapping of sections")
    _absolute_paths(raw, path.parent.resolve())
    return resolve_config(apply_overrides(raw, overrides))
