"""Lightning data module: datasets from the config, seeded augmentation, exact resume.

The training sampler yields ``(index, seed)`` pairs: a fresh permutation per epoch drawn
from (run seed, epoch), and one augmentation seed per position. Its state is just (epoch,
samples consumed), which the data module saves in checkpoints, so ``--resume`` from a
checkpoint written mid-epoch continues with exactly the batches the uninterrupted run
would have seen. The sampler also splits positions over DDP ranks itself (the trainer is
told not to wrap it), so the data order is the same whatever the number of devices.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from landcover.engine.errors import ConfigError
from landcover.training.datasets import SegmentationDataset, build_dataset
from landcover.training.transforms import (
    draw_scale,
    mosaic,
    random_crop,
    random_dihedral,
    resize,
)


class EpochSampler(Sampler[tuple[int, int]]):
    """``(dataset index, augmentation seed)`` for each position of an epoch."""

    def __init__(
        self, dataset_size: int, samples_per_epoch: int, seed: int,
        num_replicas: int = 1, rank: int = 0,
    ) -> None:
        self.dataset_size = dataset_size
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.skip = 0  # samples of this rank already consumed in ``epoch`` (resume)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def resume_at(self, epoch: int, consumed: int) -> None:
        self.epoch, self.skip = epoch, consumed

    def __len__(self) -> int:
        return math.ceil(self.samples_per_epoch / self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        rounds = math.ceil(len(self) * self.num_replicas / self.dataset_size)
        order = np.concatenate([rng.permutation(self.dataset_size) for _ in range(rounds)])
        positions = range(self.rank, len(self) * self.num_replicas, self.num_replicas)
        start, self.skip = self.skip, 0
        for position in positions[start:]:
            sample_seed = np.random.SeedSequence([self.seed, self.epoch, position])
            yield int(order[position]), int(sample_seed.generate_state(1)[0])


class Normalizer:
    """``(raw - mean) / std`` per band, from the dataset's band statistics."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        shape = (len(dataset.bands), 1, 1)
        self.mean = torch.tensor([b.mean for b in dataset.bands], dtype=torch.float32).view(shape)
        self.std = torch.tensor([b.std for b in dataset.bands], dtype=torch.float32).view(shape)

    def __call__(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        image = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
        return (image - self.mean) / self.std


class AugmentedSamples(Dataset):
    """Training crops: random scale + crop (or a mosaic of four), flips and turns."""

    def __init__(self, dataset: SegmentationDataset, cfg: Mapping[str, Any]) -> None:
        self.dataset = dataset
        self.normalize = Normalizer(dataset)
        self.crop_size = int(cfg["crop_size"])
        self.scale = cfg["scale"]
        self.flip = bool(cfg["flip"])
        self.rotate = bool(cfg["rotate90"])
        self.mosaic_p = float(cfg["mosaic_p"])

    def _scaled_crop(
        self, index: int, shape: tuple[int, int], rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.dataset[index]
        factor = draw_scale(self.scale, rng)
        # Crop the source window first, then normalise and scale only the crop. The raw
        # crop is padded with NaN, which becomes 0 (the band mean) after normalising.
        source = (max(1, round(shape[0] / factor)), max(1, round(shape[1] / factor)))
        image, mask = random_crop(
            torch.from_numpy(sample["image"]), torch.from_numpy(sample["mask"]), source, rng,
            self.dataset.ignore_index, image_fill=float("nan"),
        )
        image = torch.nan_to_num_(self.normalize(image), nan=0.0)
        mask = mask.long()
        return resize(image, mask, shape)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        rng = np.random.default_rng(seed)
        size = (self.crop_size, self.crop_size)
        if self.mosaic_p > 0 and rng.random() < self.mosaic_p:
            sources = [index, *(int(i) for i in rng.integers(len(self.dataset), size=3))]
            image, mask = mosaic(
                lambda k, shape: self._scaled_crop(sources[k], shape, rng), self.crop_size, rng
            )
        else:
            image, mask = self._scaled_crop(index, size, rng)
        image, mask = random_dihedral(image, mask, rng, self.flip, self.rotate)
        return {"image": image.contiguous(), "mask": mask.contiguous()}


class WholeImages(Dataset):
    """Validation: whole normalised images with their masks (batch size 1). Indices past
    the end give a small all-ignored sample, which pads the ranks' shares to one length."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset
        self.normalize = Normalizer(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index >= len(self.dataset):
            size = 32
            return {
                "image": torch.zeros(len(self.dataset.bands), size, size),
                "mask": torch.full((size, size), self.dataset.ignore_index, dtype=torch.long),
                "name": "",
            }
        sample = self.dataset[index]
        return {
            "image": self.normalize(sample["image"]),
            "mask": torch.from_numpy(sample["mask"]).long(),
            "name": sample["name"],
        }


class SegmentationDataModule(pl.LightningDataModule):
    """Builds (and so checks) the train and val datasets on construction."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.cfg = config["data"]
        self.seed = int(config["trainer"]["seed"])
        self.train_set = build_dataset(self.cfg, "train")
        self.val_set = build_dataset(self.cfg, "val")
        if [c.to_dict() for c in self.train_set.classes] != [
            c.to_dict() for c in self.val_set.classes
        ]:
            raise ConfigError("config: the train and val splits have different classes")
        crop = int(self.cfg["crop_size"])
        if crop <= 0 or crop % 32:
            raise ConfigError(f"config: data.crop_size {crop} must be a positive multiple of 32")
        self.batch_size = int(self.cfg["batch_size"])
        samples = self.cfg["samples_per_epoch"] or len(self.train_set)
        if samples < self.batch_size:
            raise ConfigError(
                f"config: {samples} samples per epoch is fewer than one batch of "
                f"{self.batch_size}; lower data.batch_size or raise data.samples_per_epoch"
            )
        self.sampler = EpochSampler(len(self.train_set), int(samples), self.seed)

    @property
    def classes(self):
        return self.train_set.classes

    @property
    def bands(self):
        return self.train_set.bands

    @property
    def modalities(self):
        return self.train_set.modalities

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self.sampler.num_replicas = self.trainer.world_size
            self.sampler.rank = self.trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        workers = int(self.cfg["num_workers"])
        return DataLoader(
            AugmentedSamples(self.train_set, self.cfg),
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        # Each rank validates its share of the images (padded to equal shares with
        # all-ignored samples); the confusion matrices are summed over the ranks.
        rank, ranks = self.sampler.rank, self.sampler.num_replicas
        padded = math.ceil(len(self.val_set) / ranks) * ranks
        return DataLoader(
            WholeImages(self.val_set), batch_size=1, num_workers=int(self.cfg["num_workers"]),
            sampler=list(range(rank, padded, ranks)),
        )

    def state_dict(self) -> dict[str, Any]:
        loop = self.trainer.fit_loop
        return {
            "epoch": loop.epoch_progress.current.processed,
            # Batches of this epoch whose training step has run (saved in the step's end hook).
            "batches": loop.epoch_loop.batch_progress.current.processed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.resume_at(int(state["epoch"]), int(state["batches"]) * self.batch_size)
