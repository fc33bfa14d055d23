"""Running the model on batches of tiles: device choice, mixed precision, test-time
augmentation, and batch halving when the GPU runs out of memory."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from landcover.engine.errors import ConfigError

# Test-time augmentation: (quarter turns, mirror left-right) per forward pass. "flip" is
# the identity, a left-right and an up-down mirror; "d4" all 8 symmetries of the square.
TTA_TRANSFORMS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True), (2, True)),
    "d4": tuple((turns, mirror) for turns in range(4) for mirror in (False, True)),
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

    TTA passes are averaged in probability space (softmax first). On CUDA the model runs
    under autocast (bfloat16 where supported, else float16); an out-of-memory error halves
    the batch and retries, reported through ``log``.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        *,
        batch_size: int,
        tta: str = "none",
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
        for turns, mirror in self.transforms:
            precision = (
                nullcontext() if self.amp_dtype is None
                else torch.autocast(self.device.type, dtype=self.amp_dtype)
            )
            with precision:
                logits = self.model(_augment(x, turns, mirror))
            probabilities = _restore(torch.softmax(logits.float(), dim=1), turns, mirror)
            total = probabilities if total is None else total.add_(probabilities)
        if len(self.transforms) > 1:
            total /= len(self.transforms)
        return total.cpu().numpy()
