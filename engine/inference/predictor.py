"""Running the model on batches of tiles: device choice, mixed precision, test-time
augmentation, and batch halving when the GPU runs out of memory."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landcover.engine.errors import ConfigError


class TtaPass(NamedTuple):
    """One forward pass of test-time augmentation; its output is mapped back onto the tile."""

    turns: int = 0  # quarter turns (torch.rot90), after the mirror
    mirror: bool = False  # mirror left-right
    scale: float = 1.0  # resize the tile (to the model's input multiple), then back
    brightness: float = 1.0  # multiply the raw band values


_D4 = tuple(TtaPass(turns, mirror) for turns in range(4) for mirror in (False, True))
# "flip": the identity, a left-right and an up-down mirror; "d4": all 8 symmetries of the
# square; "d4_plus": those, plus (separately, not combined) scales 0.75 / 1.25 / 1.5 and
# brightness x0.9 / x1.1: 13 passes.
TTA_TRANSFORMS: dict[str, tuple[TtaPass, ...]] = {
    "none": (TtaPass(),),
    "flip": (TtaPass(), TtaPass(0, True), TtaPass(2, True)),
    "d4": _D4,
    "d4_plus": _D4
    + tuple(TtaPass(scale=scale) for scale in (0.75, 1.25, 1.5))
    + tuple(TtaPass(brightness=brightness) for brightness in (0.9, 1.1)),
}


def select_device(name: str = "auto") -> tuple[torch.device, str]:
    """The torch device for ``name`` (auto: CUDA, then MPS, then CPU) and a description."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is available here; use cpu or auto")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name}: there are {torch.cuda.device_count()} CUDA devices"
            )
        device = torch.device("cuda", index)
        return device, f"{device} ({torch.cuda.get_device_name(index)})"
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("--device mps: Apple MPS is not available here; use cpu or auto")
        return device, "mps (Apple GPU)"
    if device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device, f"cpu ({torch.get_num_threads()} threads)"


def _augment(x: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    if mirror:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def _restore(y: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    if turns:
        y = torch.rot90(y, -turns, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if mirror else y


class Predictor:
    """Class probabilities for batches of normalised tiles.

    TTA passes are averaged in probability space (softmax first). A scaled pass resizes the
    tile (bilinear, sides rounded to the model's ``input_multiple``) and its probabilities
    back. A brightness pass scales the raw values, which needs the bands' normalisation
    ``(raw - mean) / std``: ``band_mean`` and ``band_std``. On CUDA the model runs under
    autocast (bfloat16 where supported, else float16); an out-of-memory error halves the
    batch and retries, reported through ``log``.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        *,
        batch_size: int,
        tta: str = "none",
        band_mean: Sequence[float] | None = None,
        band_std: Sequence[float] | None = None,
        log: Callable[[str, str], None] = lambda level, message: None,
    ) -> None:
        if tta not in TTA_TRANSFORMS:
            raise ConfigError(f"unknown TTA {tta!r}; use one of {', '.join(TTA_TRANSFORMS)}")
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size} must be at least 1")
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.transforms = TTA_TRANSFORMS[tta]
        self.input_multiple: int = getattr(model, "input_multiple", 32)
        # x_norm of raw * b is b * x_norm + (b - 1) * mean / std: the per-band mean / std
        self.mean_over_std: torch.Tensor | None = None
        if band_mean is not None and band_std is not None:
            mean = torch.tensor(band_mean, dtype=torch.float32)
            std = torch.tensor(band_std, dtype=torch.float32)
            self.mean_over_std = (mean / std).view(1, -1, 1, 1).to(device)
        elif any(p.brightness != 1.0 for p in self.transforms):
            raise ConfigError(f"TTA {tta!r} changes the brightness: it needs the bands' mean "
                              "and std (band_mean, band_std)")
        self.log = log
        self.amp_dtype: torch.dtype | None = None
        if device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @property
    def passes_per_tile(self) -> int:
        return len(self.transforms)

    @property
    def precision(self) -> str:
        return "float32" if self.amp_dtype is None else f"mixed {self.amp_dtype}".replace(
            "torch.", ""
        )

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes, h, w) float32 for tiles (N, bands, h, w) float32."""
        outputs = []
        start = 0
        while start < len(tiles):
            count = min(self.batch_size, len(tiles) - start)
            try:
                outputs.append(self._forward(tiles[start: start + count]))
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise ConfigError(
                        f"the GPU ran out of memory with a single {tiles.shape[-2]}x"
                        f"{tiles.shape[-1]} tile; use a smaller --tile or --device cpu"
                    ) from None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.log("warning", f"CUDA out of memory with batches of {self.batch_size} "
                                    f"tiles: halving to {self.batch_size // 2} and going on")
                self.batch_size //= 2
                continue
            start += count
        return np.concatenate(outputs)

    @torch.inference_mode()
    def _forward(self, tiles: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(tiles).to(self.device, non_blocking=True)
        total = None
        for tta_pass in self.transforms:
            probabilities = self._run_pass(x, tta_pass)
            total = probabilities if total is None else total.add_(probabilities)
        if len(self.transforms) > 1:
            total /= len(self.transforms)
        return total.cpu().numpy()

    def _run_pass(self, x: torch.Tensor, tta_pass: TtaPass) -> torch.Tensor:
        """Probabilities of one TTA pass, mapped back onto the tiles ``x``."""
        turns, mirror, scale, brightness = tta_pass
        if brightness != 1.0:
            if self.mean_over_std.shape[1] != x.shape[1]:
                raise ValueError(f"{self.mean_over_std.shape[1]} band means for tiles of "
                                 f"{x.shape[1]} bands")
            x = brightness * x + (brightness - 1.0) * self.mean_over_std
        x = _augment(x, turns, mirror)
        size = x.shape[-2:]
        scaled = tuple(self._scaled_side(side, scale) for side in size)
        if scaled != size:
            x = F.interpolate(x, size=scaled, mode="bilinear", align_corners=False,
                              antialias=scale < 1.0)
        precision = (
            nullcontext() if self.amp_dtype is None
            else torch.autocast(self.device.type, dtype=self.amp_dtype)
        )
        with precision:
            logits = self.model(x)
        probabilities = torch.softmax(logits.float(), dim=1)
        if scaled != size:
            probabilities = F.interpolate(probabilities, size=size, mode="bilinear",
                                          align_corners=False, antialias=scale > 1.0)
        return _restore(probabilities, turns, mirror)

    def _scaled_side(self, side: int, scale: float) -> int:
        """``side * scale`` rounded to the nearest multiple of the model's input multiple
        (halves up; at least one multiple)."""
        multiple = self.input_multiple
        return max(multiple, math.floor(side * scale / multiple + 0.5) * multiple)
