"""`landcover train` / `export` on real Dubai crops: a few CPU steps, exact resume, the
export -> load -> segment round trip, and bad configs failing at start."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from osgeo import gdal

from landcover.engine.cli import main as cli_main
from landcover.engine.errors import ConfigError
from landcover.engine.inference.segment import segment
from landcover.engine.modelfile import load_model_package
from landcover.training.callbacks import AtomicCheckpointIO
from landcover.training.config import load_config, resolve_config
from landcover.training.datamodule import EpochSampler
from landcover.training.datasets import build_dataset
from landcover.training.module import lr_factor
from landcover.training.train import train

DUBAI = Path(__file__).parent / "data" / "dubai_folder"
CLASSES = [
    {"name": "building", "color": [60, 16, 152]},
    {"name": "land", "color": [132, 41, 246]},
    {"name": "road", "color": [110, 193, 228]},
    {"name": "vegetation", "color": [254, 221, 58]},
    {"name": "water", "color": [226, 169, 41]},
]


def dubai_config(**sections) -> dict:
    raw = {
        "model": {"name": "unetmamba_tiny"},
        "data": {
            "layout": "folder", "root": str(DUBAI), "classes": CLASSES,
            "ignore_colors": [[155, 155, 155], [0, 0, 0]], "holdout": "tile1_*",
            "crop_size": 64, "batch_size": 2, "samples_per_epoch": 6, "scale": [0.75, 1.0],
        },
        "trainer": {
            "max_epochs": 1, "seed": 3, "progress_bar": False, "log_every_n_steps": 1,
            "checkpoint_every_n_steps": 2,
        },
        "export": {"tile_size": 64, "tile_overlap": 16},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return resolve_config(raw)


def step_losses(run: Path) -> dict[int, float]:
    with open(run / "logs" / "metrics.csv", newline="") as stream:
        return {
            int(row["step"]): float(row["train/loss_step"])
            for row in csv.DictReader(stream) if row.get("train/loss_step")
        }


def test_folder_layout_reads_real_dubai_labels():
    train_set = build_dataset(dubai_config()["data"], "train")
    val_set = build_dataset(dubai_config()["data"], "val")
    assert len(train_set) == 3 and len(val_set) == 1
    assert val_set[0]["name"] == "tile1_image_part_002"
    sample = train_set[0]
    assert sample["image"].shape == (3, 128, 128) and sample["image"].dtype == np.float32
    # the paletted and the RGB masks decode to the same class ids
    labels = np.unique(np.concatenate([train_set[i]["mask"].ravel() for i in range(3)]))
    assert set(labels) <= {0, 1, 2, 3, 4, 255} and len(labels) >= 3


def test_train_export_segment_round_trip(tmp_path):
    config = dubai_config(trainer={"max_epochs": 2})
    summary = train(config, tmp_path / "run")
    assert summary["steps"] == 6
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert summary["best"] and summary["val_metrics"]["miou"] is not None
    assert not list((tmp_path / "run" / "checkpoints").glob("*.partial"))

    package = tmp_path / "dubai.lcm"
    assert cli_main(["export", summary["best"], "--out", str(package), "--half"]) == 0
    loaded = load_model_package(package)
    assert [c.name for c in loaded.meta.classes] == [c["name"] for c in CLASSES]
    assert loaded.meta.training["val_metrics"]["miou"] == pytest.approx(
        summary["val_metrics"]["miou"]
    )
    assert not loaded.model.has_aux  # the LSM head stays behind

    out = tmp_path / "classes.tif"
    segment(DUBAI / "images" / "tile1_image_part_002.png", package, out, device="cpu")
    values = gdal.Open(str(out)).ReadAsArray()
    assert values.shape == (128, 128) and set(np.unique(values)) <= set(range(5))


class CrashAt(pl.Callback):
    """Kills training as it starts optimiser step ``step`` (a crashed or killed job)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_mid_epoch_continues_exactly(tmp_path):
    # 8 samples in batches of 2: 4 steps per epoch, a checkpoint every 2 steps. The job
    # dies as it starts step 3 (mid-epoch 0); resuming from the step-2 checkpoint must
    # give the uninterrupted run's losses, data order and drop-path draws included.
    settings = {"data": {"samples_per_epoch": 8, "mosaic_p": 0.5},
                "trainer": {"max_epochs": 2, "check_val_every_n_epoch": 5}}
    whole = train(dubai_config(**settings), tmp_path / "whole")
    assert whole["steps"] == 8
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(dubai_config(**settings), tmp_path / "split", callbacks=[CrashAt(3)])
    train(dubai_config(**settings), tmp_path / "split", resume=True)
    expected, resumed = step_losses(tmp_path / "whole"), step_losses(tmp_path / "split")
    assert sorted(resumed)[0] == 2  # the resumed run starts at the 3rd step
    for step in range(2, 8):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


def test_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path):
    config = dubai_config(trainer={"max_steps": 1})
    train(config, tmp_path / "run")
    with pytest.raises(ConfigError, match="--resume"):
        train(config, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"no .*last\.ckpt"):
        train(config, tmp_path / "other", resume=True)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"model": {"name": "no_such_net"}}, "unknown model 'no_such_net'"),
        ({"data": {"root": "/no/such/folder"}}, "dataset folder not found"),
        ({"data": {"classes": [CLASSES[0], *CLASSES[2:]]}}, r"colour \(132, 41, 246\) is neither"),
        ({"data": {"layout": "nope"}}, "unknown data.layout 'nope'"),
        ({"data": {"holdout": "tile9_*"}}, "matches no image"),
        ({"loss": {"name": "nope"}}, "unknown loss 'nope'"),
        ({"optim": {"schedule": "linear"}}, "optim.schedule 'linear'"),
        ({"data": {"crop_size": 50}}, "multiple of 32"),
    ],
)
def test_bad_configs_fail_at_start_with_one_line(tmp_path, sections, message):
    with pytest.raises((ConfigError, FileNotFoundError), match=message) as caught:
        train(dubai_config(**sections), tmp_path / "run")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_index_masks_with_values_beyond_the_classes_are_refused(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    shutil.copy(DUBAI / "images" / "tile2_image_part_001.png", tmp_path / "images" / "a.png")
    mask = np.full((128, 128), 7, np.uint8)
    driver = gdal.GetDriverByName("MEM").Create("", 128, 128, 1, gdal.GDT_Byte)
    driver.GetRasterBand(1).WriteArray(mask)
    gdal.GetDriverByName("PNG").CreateCopy(str(tmp_path / "masks" / "a.png"), driver)
    data = {"layout": "folder", "root": str(tmp_path), "classes": CLASSES,
            "mask_encoding": "index"}
    with pytest.raises(ConfigError, match="label value 7 is not one of the 5 classes"):
        build_dataset(data, "train")


def test_config_file_keys_are_checked_and_overrides_apply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: unetmamba_tiny}\ndata: {layout: folder, root: data}\n"
                    "optim: {lr: 0.1}\n")
    config = load_config(path, ["optim.lr=1e-4", "trainer.devices=2"])
    assert config["optim"]["lr"] == 1e-4 and config["trainer"]["devices"] == 2
    assert config["data"]["root"] == str(tmp_path / "data")  # relative to the file
    path.write_text("model: {name: unetmamba_tiny}\ndata: {layout: folder}\noptim: {lrr: 1}\n")
    with pytest.raises(ConfigError, match=r"unknown key optim\.lrr"):
        load_config(path)


def test_cli_train_reports_bad_config_in_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: unetmamba_tiny}\ndata: {layout: folder, root: nowhere}\n")
    assert cli_main(["train", "--config", str(path), "--out", str(tmp_path / "r"),
                     "trainer.max_steps=1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("landcover: error:") and "\n" not in error


def test_epoch_sampler_order_seeds_ranks_and_resume():
    sampler = EpochSampler(dataset_size=5, samples_per_epoch=12, seed=1)
    first = list(sampler)
    assert len(first) == 12 and list(sampler) == first
    assert sorted(i for i, _ in first[:5]) == list(range(5))  # a permutation per round
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.resume_at(0, 4)
    assert list(sampler) == first[4:]
    ranks = [EpochSampler(5, 12, 1, num_replicas=2, rank=r) for r in (0, 1)]
    assert [k for pair in zip(*ranks, strict=True) for k in pair] == first


def test_lr_schedules():
    optim = {"lr": 1.0, "min_lr": 0.0, "warmup_steps": 2, "schedule": "cosine",
             "poly_power": 1.0, "restart_epochs": 1, "restart_mult": 2}
    cosine = lr_factor(optim, 12, 5)
    assert [cosine(0), cosine(1), cosine(2)] == [0.5, 1.0, 1.0]
    assert cosine(7) == pytest.approx(0.5) and cosine(12) == pytest.approx(0.0)
    assert lr_factor({**optim, "schedule": "poly"}, 12, 5)(7) == pytest.approx(0.5)
    restarts = lr_factor({**optim, "schedule": "cosine_restarts", "warmup_steps": 0}, 100, 4)
    assert restarts(4) == pytest.approx(1.0)  # first restart after 1 epoch of 4 steps
    assert restarts(8) == pytest.approx(0.5)  # the second period lasts 8 steps
    assert restarts(12) == pytest.approx(1.0)


def test_atomic_checkpoint_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous")
    with pytest.raises(Exception):  # noqa: B017 (torch.save raises pickling errors)
        AtomicCheckpointIO().save_checkpoint({"bad": lambda: None}, target)
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, target)
    assert torch.load(target, weights_only=True)["w"].tolist() == [1.0, 1.0]


def test_export_refuses_a_file_that_is_not_a_training_checkpoint(tmp_path, capsys):
    other = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, other)
    assert cli_main(["export", str(other), "--out", str(tmp_path / "m.lcm")]) == 2
    assert "not a checkpoint written by `landcover train`" in capsys.readouterr().err
    assert not (tmp_path / "m.lcm").exists()
    json.dumps({})


def test_two_process_ddp_on_cpu(tmp_path):
    """The same command on 2 CPU processes (DDP over gloo): each rank trains on its share
    of the epoch and validates its share of the images; the summed confusion matrix
    counts every held-out pixel once."""
    import subprocess
    import sys

    import yaml

    config = dubai_config(data={"samples_per_epoch": 8},
                          trainer={"check_val_every_n_epoch": 1})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    landcover = Path(sys.executable).with_name("landcover")
    done = subprocess.run(
        [str(landcover), "train", "--config", str(path), "--out", str(tmp_path / "run"),
         "--accelerator", "cpu", "--devices", "2", "trainer.strategy=ddp", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["steps"] == 2  # 8 samples, batches of 2 on each of 2 ranks
    assert summary["val_metrics"]["pixels"] == 128 * 128  # the held-out crop, counted once
