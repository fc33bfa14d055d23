"""``landcover train``: build the data, the model and a Lightning trainer from a config.

The same call runs on a CPU, one GPU, several GPUs (DDP) and several machines: devices
and nodes come from the config (or ``--devices`` / ``--num-nodes``), and launching on
many machines is torchrun's or SLURM's job, which Lightning detects.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from landcover.engine.errors import ConfigError
from landcover.training.callbacks import AtomicCheckpointIO, LastCheckpoint
from landcover.training.datamodule import SegmentationDataModule
from landcover.training.module import SegmentationTask

log = logging.getLogger("landcover.train")

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
BEST = "best.ckpt"


def resolve_precision(setting: str, accelerator: str) -> str:
    """``auto``: bf16 (or fp16) mixed precision on a CUDA GPU, full fp32 elsewhere."""
    if setting != "auto":
        return str(setting)
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if not on_gpu:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def prepare_run_dir(out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (or None for a fresh run). A fresh run refuses a
    folder that already holds a run, so nothing already trained is overwritten."""
    last = out / CHECKPOINTS / LAST
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"--resume: no {last} to continue from; start without --resume")
        return last
    if (out / CHECKPOINTS).exists() and any((out / CHECKPOINTS).iterdir()):
        raise ConfigError(
            f"{out} already holds a training run; pass --resume to continue it or --out for a "
            "new one"
        )
    out.mkdir(parents=True, exist_ok=True)
    return None


def build_trainer(
    config: Mapping[str, Any], out: Path, extra_callbacks: Sequence[pl.Callback] = ()
) -> pl.Trainer:
    trainer_cfg = config["trainer"]
    loggers: list[Any] = [CSVLogger(out, name="", version="logs")]
    try:
        import tensorboard  # noqa: F401  (only used when installed)
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(out, name="", version="tensorboard"))
    except ImportError:
        pass
    callbacks = [
        ModelCheckpoint(
            dirpath=out / CHECKPOINTS, filename=Path(BEST).stem, monitor="val/mIoU",
            mode="max", save_top_k=1, auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        LastCheckpoint(out / CHECKPOINTS / LAST, int(trainer_cfg["checkpoint_every_n_steps"])),
        LearningRateMonitor(logging_interval="step"),
        *extra_callbacks,
    ]
    optional = {
        key: trainer_cfg[key]
        for key in ("val_check_interval", "limit_val_batches")
        if trainer_cfg[key] is not None
    }
    return pl.Trainer(
        default_root_dir=out,
        accelerator=trainer_cfg["accelerator"],
        devices=trainer_cfg["devices"],
        num_nodes=int(trainer_cfg["num_nodes"]),
        strategy=trainer_cfg["strategy"],
        precision=resolve_precision(trainer_cfg["precision"], trainer_cfg["accelerator"]),
        max_epochs=trainer_cfg["max_epochs"],
        max_steps=trainer_cfg["max_steps"],
        gradient_clip_val=trainer_cfg["gradient_clip_val"],
        accumulate_grad_batches=int(trainer_cfg["accumulate_grad_batches"]),
        check_val_every_n_epoch=trainer_cfg["check_val_every_n_epoch"],
        log_every_n_steps=int(trainer_cfg["log_every_n_steps"]),
        enable_progress_bar=bool(trainer_cfg["progress_bar"]),
        logger=loggers,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        # The epoch sampler splits the data over ranks itself (exact resume).
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        **optional,
    )


def train(
    config: Mapping[str, Any],
    out: Path,
    *,
    resume: bool = False,
    callbacks: Sequence[pl.Callback] = (),
) -> dict[str, Any]:
    """Train per ``config`` into ``out`` (checkpoints/, logs/, config.yaml); returns a
    summary with the checkpoint paths and the last validation metrics. ``callbacks`` are
    added to the trainer's own (for scripts and notebooks)."""
    resume_from = prepare_run_dir(out, resume)
    pl.seed_everything(int(config["trainer"]["seed"]), workers=True, verbose=False)
    datamodule = SegmentationDataModule(config)  # builds the datasets: bad data fails here
    task = SegmentationTask(
        config,
        [c.to_dict() for c in datamodule.classes],
        [b.to_dict() for b in datamodule.bands],
        [m.to_dict() for m in datamodule.modalities],
    )
    trainer = build_trainer(config, out, callbacks)
    if trainer.is_global_zero:
        (out / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
    with warnings.catch_warnings():
        # Lightning cannot see that the data module resumes mid-epoch (its sampler state
        # is in the checkpoint), and warns that it does not.
        warnings.filterwarnings("ignore", message=".*checkpoint that ended before the epoch")
        trainer.fit(task, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    summary = {
        "out": str(out),
        "last": str(out / CHECKPOINTS / LAST),
        "best": str(out / CHECKPOINTS / BEST) if (out / CHECKPOINTS / BEST).is_file() else None,
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "val_metrics": task.val_metrics,
        # Under DDP every process returns; only rank 0 should report.
        "global_rank": trainer.global_rank,
    }
    if trainer.is_global_zero:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
