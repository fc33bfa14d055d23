"""``landcover export``: a training checkpoint -> a model package (deploy form).

Reads the checkpoint with ``torch.load(weights_only=True)`` (no code from the file runs),
rebuilds the architecture from the config stored in it, drops the train-only heads and
writes the package with the classes, bands, GSD, tile size and validation metrics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from landcover.engine.errors import ModelFileError
from landcover.engine.modelfile import (
    BandInfo,
    ClassInfo,
    ModalityInfo,
    ModelMeta,
    save_model_package,
)
from landcover.engine.models import create_model, to_deploy

MODEL_PREFIX = "model."


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure: not a usable checkpoint
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"{path}: not a readable training checkpoint ({first})") from None
    if not isinstance(checkpoint, dict) or "landcover" not in checkpoint:
        raise ModelFileError(f"{path}: not a checkpoint written by `landcover train`")
    return checkpoint


def export_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    half: bool = False,
    gsd_m: float | None = None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
) -> ModelMeta:
    """Write the package for ``checkpoint_path`` to ``out``; returns its metadata."""
    checkpoint = read_checkpoint(checkpoint_path)
    hparams = checkpoint["hyper_parameters"]
    config = hparams["config"]
    info = checkpoint["landcover"]
    classes = [ClassInfo.from_dict(c) for c in info["classes"]]
    bands = [BandInfo.from_dict(b) for b in info["bands"]]
    modalities = [ModalityInfo.from_dict(m) for m in info["modalities"]] or None
    model = create_model(
        config["model"]["name"], num_classes=len(classes), in_channels=len(bands),
        aux_head=True, **config["model"]["options"],
    )
    state = {
        key[len(MODEL_PREFIX):]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(MODEL_PREFIX)
    }
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ModelFileError(
            f"{checkpoint_path}: weights do not fit {config['model']['name']} "
            f"({str(error).splitlines()[0]})"
        ) from None
    export_cfg = config["export"]
    training = {
        "model_config": config["model"],
        "data_layout": config["data"]["layout"],
        "data_root": Path(str(config["data"].get("root", ""))).name,
        "epochs": checkpoint.get("epoch"),
        "steps": checkpoint.get("global_step"),
        "checkpoint": Path(checkpoint_path).name,
        "val_metrics": _summary(info.get("val_metrics")),
    }
    if export_cfg.get("description"):
        training["description"] = export_cfg["description"]
    meta = ModelMeta.for_model(
        model,
        classes=classes,
        bands=bands,
        ignore_index=int(config["data"].get("ignore_index", 255)),
        gsd_m=gsd_m if gsd_m is not None else export_cfg.get("gsd_m"),
        tile_size=int(tile_size or export_cfg["tile_size"]),
        tile_overlap=int(tile_overlap if tile_overlap is not None else export_cfg["tile_overlap"]),
        modalities=modalities,
        training=training,
    )
    save_model_package(out, to_deploy(model), meta, half=half)
    return meta


def _summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if not metrics:
        return None
    return {
        "miou": metrics["miou"],
        "mf1": metrics["mf1"],
        "oa": metrics["oa"],
        "macc": metrics["macc"],
        "iou": {entry["name"]: entry["iou"] for entry in metrics["classes"]},
    }
