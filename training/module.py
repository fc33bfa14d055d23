"""The Lightning module: any registered model, its loss, AdamW and the schedule, and
validation metrics from one confusion matrix over whole held-out images."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from landcover.engine.errors import ConfigError
from landcover.engine.inference.array import predict_array
from landcover.engine.inference.predictor import Predictor
from landcover.engine.losses import build_loss
from landcover.engine.metrics import ConfusionMatrix
from landcover.engine.models import create_model, load_encoder_weights

SCHEDULES = ("cosine", "cosine_restarts", "poly", "constant")


class SegmentationTask(pl.LightningModule):
    """Trains ``config["model"]`` on the classes and bands the data module found."""

    def __init__(
        self,
        config: Mapping[str, Any],
        classes: Sequence[Mapping[str, Any]],
        bands: Sequence[Mapping[str, Any]],
        modalities: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {"config": dict(config), "classes": list(classes), "bands": list(bands),
             "modalities": list(modalities)}
        )
        model_cfg = config["model"]
        self.model = create_model(
            model_cfg["name"], num_classes=len(classes), in_channels=len(bands),
            aux_head=True, **model_cfg["options"],
        )
        if model_cfg.get("encoder_weights"):
            load_encoder_weights(self.model, model_cfg["encoder_weights"])
        loss_cfg = dict(config["loss"])
        self.loss = build_loss(loss_cfg.pop("name"), **loss_cfg)
        self.class_names = [c["name"] for c in classes]
        self.ignore_index = int(config["data"].get("ignore_index", 255))
        self.confusion = ConfusionMatrix(len(classes), self.ignore_index)
        self.val_metrics: dict[str, Any] | None = None
        self._rng_state: torch.Tensor | None = None
        if config["optim"]["schedule"] not in SCHEDULES:
            raise ConfigError(
                f"config: optim.schedule {config['optim']['schedule']!r}: "
                f"use one of {', '.join(SCHEDULES)}"
            )
        if config["optim"]["name"] != "adamw":
            raise ConfigError(f"config: optim.name {config['optim']['name']!r}: use adamw")

    def forward(self, image: torch.Tensor) -> Any:
        return self.model(image)

    # ------------------------------------------------------------------ training

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_state is not None:  # resumed: drop-path draws continue where they were
            torch.set_rng_state(self._rng_state)
            self._rng_state = None

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self.model(batch["image"]), batch["mask"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=batch["mask"].shape[0], sync_dist=True)
        return loss

    # ------------------------------------------------------------------ validation

    def on_validation_epoch_start(self) -> None:
        self.confusion = ConfusionMatrix(len(self.class_names), self.ignore_index)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        crop = int(self.hparams.config["data"]["crop_size"])
        predictor = Predictor(self.model, self.device, batch_size=4)
        for image, mask in zip(batch["image"], batch["mask"], strict=True):
            probabilities = predict_array(
                predictor, image.cpu().numpy(), tile=crop, overlap=crop // 8
            )
            self.confusion.update(probabilities.argmax(0), mask.cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        matrix = torch.as_tensor(self.confusion.matrix, device=self.device)
        matrix = self.trainer.strategy.reduce(matrix, reduce_op="sum")
        self.confusion.matrix = matrix.cpu().numpy().astype(np.int64)
        if self.trainer.sanity_checking:
            return
        metrics = self.confusion.to_dict(self.class_names)
        self.val_metrics = metrics
        self.log("val/mIoU", _finite(metrics["miou"]), prog_bar=True)
        self.log("val/OA", _finite(metrics["oa"]))
        self.log("val/mF1", _finite(metrics["mf1"]))
        for entry in metrics["classes"]:
            self.log(f"val/IoU/{entry['name']}", _finite(entry["iou"]))

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.hparams.config["optim"]
        encoder = getattr(self.model, "encoder", None)
        encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
        groups = [{"params": [p for p in self.model.parameters() if id(p) not in encoder_ids]}]
        if encoder_ids:
            groups.append({
                "params": [p for p in self.model.parameters() if id(p) in encoder_ids],
                "lr": optim["encoder_lr"] or optim["lr"],
            })
        optimizer = torch.optim.AdamW(groups, lr=optim["lr"], weight_decay=optim["weight_decay"])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = self.trainer.max_epochs if self.trainer.max_epochs not in (None, -1) else None
        steps_per_epoch = total / epochs if epochs else total
        factor = lr_factor(optim, total, steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["landcover"] = {
            "classes": self.hparams.classes,
            "bands": self.hparams.bands,
            "modalities": self.hparams.modalities,
            "val_metrics": self.val_metrics,
        }
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_state = checkpoint.get("torch_rng_state")
        self.val_metrics = checkpoint.get("landcover", {}).get("val_metrics")


def lr_factor(optim: Mapping[str, Any], total_steps: int, steps_per_epoch: float):
    """The schedule as a multiplier of the base learning rate for each optimiser step:
    linear warm-up, then cosine / cosine with warm restarts (periods in epochs) / poly /
    constant, never below ``min_lr``."""
    warmup = int(optim["warmup_steps"])
    floor = float(optim["min_lr"]) / float(optim["lr"])
    schedule = optim["schedule"]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = step - warmup
        span = max(1, total_steps - warmup)
        if schedule == "constant":
            value = 1.0
        elif schedule == "poly":
            value = (1 - min(progress, span) / span) ** float(optim["poly_power"])
        elif schedule == "cosine":
            value = 0.5 * (1 + math.cos(math.pi * min(progress, span) / span))
        else:  # cosine_restarts
            period = max(1.0, float(optim["restart_epochs"]) * steps_per_epoch)
            mult = float(optim["restart_mult"])
            while progress >= period:
                progress -= period
                period *= mult
            value = 0.5 * (1 + math.cos(math.pi * progress / period))
        return max(floor, value)

    return factor


def _finite(value: float | None) -> float:
    return float("nan") if value is None else float(value)
