"""SS2D's selective scan over the 4 scan directions of a 2-D map, with selectable backends.

``ss2d_scan`` takes the tensors SS2D makes, position-major (B, C and dt come from
per-pixel projections), runs the four directional scans and returns their outputs summed
at each pixel. Backends, all differentiable w.r.t. every input, all checked against
"reference" in tests/test_selective_scan.py:

- "reference": a step-by-step torch loop (scan_reference), the ground truth; slow.
- "numba": the fast CPU kernels (scan_numba), fp32.
- "torch": a chunked two-level scan in plain torch (scan_torch), CPU or GPU, no compiler.
- "mamba_ssm": mamba-ssm's CUDA kernel (scan_mamba_ssm), when installed.

Choice: the ``backend`` argument, else ``use_scan_backend(name)``, else the environment
variable LANDCOVER_SCAN_BACKEND, else "auto": on CUDA tensors "mamba_ssm" if importable
else "torch"; on CPU tensors "numba" if importable else "torch"; other devices "torch".

Measured on the 2-core AMD EPYC VM (AVX2), fp32, batch 1, N=16, K=4, while other jobs
shared the machine: CPU time per state update and core (robust to the sharing) and the
wall time that means on 2 idle cores. UNetMamba at 1024x1024 runs these shapes twice each.

    (H, W, Di)     numba forward      numba fwd+bwd      torch forward (1 thread)
    64x64x512      0.54 ns   36 ms    2.9 ns   190 ms    8.4 ns   1.1 s
    128x128x256    0.52 ns   70 ms    2.5 ns   340 ms    9.4 ns   2.5 s
    256x256x128    0.53 ns  145 ms    2.4 ns   650 ms    8.8 ns   4.7 s

So the 6 scans of a 1024x1024 forward take ~0.5 s with numba (~17 s with torch on one
core); "reference" runs at ~25 ns per update on tiny maps and is for tests only. numba
compiles on its first call on a machine (forward ~7 s, backward ~12.5 s of CPU) and
caches the result in engine/ops/__pycache__; later processes load it in ~0.3 s.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from landcover.engine.errors import ConfigError

SCAN_BACKENDS = ("reference", "numba", "torch", "mamba_ssm")
SCAN_BACKEND_ENV = "LANDCOVER_SCAN_BACKEND"
_AUTO = "auto"

_default_backend: str | None = None  # set by use_scan_backend

Scan = Callable[..., torch.Tensor]


def _import_backend(name: str) -> Scan:
    """The backend's function; raises ImportError when its dependency is missing."""
    if name == "reference":
        from landcover.engine.ops.scan_reference import ss2d_scan_reference

        return ss2d_scan_reference
    if name == "numba":
        from landcover.engine.ops.scan_numba import ss2d_scan_numba

        return ss2d_scan_numba
    if name == "torch":
        from landcover.engine.ops.scan_torch import ss2d_scan_torch

        return ss2d_scan_torch
    from landcover.engine.ops.scan_mamba_ssm import ss2d_scan_mamba_ssm

    return ss2d_scan_mamba_ssm


@functools.cache
def _backend_function(name: str) -> Scan | None:
    try:
        return _import_backend(name)
    except (ImportError, OSError) as error:  # OSError: a CUDA library that is missing
        if name == "numba":  # a dependency of the project: its absence is a broken install
            warnings.warn(
                f"numba cannot be imported ({error}); on CPU the selective scan falls back to "
                "the pure-torch path, over ten times slower. Reinstall numba to fix this.",
                RuntimeWarning,
                stacklevel=2,
            )
        return None


def available_scan_backends() -> list[str]:
    """The backends whose dependencies import here (a GPU is not checked)."""
    return [name for name in SCAN_BACKENDS if _backend_function(name) is not None]


def _check_name(name: str) -> str:
    if name != _AUTO and name not in SCAN_BACKENDS:
        valid = ", ".join((_AUTO, *SCAN_BACKENDS))
        raise ConfigError(f"unknown selective scan backend {name!r}; choose one of: {valid}")
    return name


@contextmanager
def use_scan_backend(name: str) -> Iterator[None]:
    """Make ``name`` ("auto" or one of SCAN_BACKENDS) the process-wide default inside the
    block (it overrides LANDCOVER_SCAN_BACKEND)."""
    global _default_backend
    previous = _default_backend
    _default_backend = _check_name(name)
    try:
        yield
    finally:
        _default_backend = previous


def _resolve(requested: str | None, device: torch.device) -> str:
    name = _check_name(requested or _default_backend or os.environ.get(SCAN_BACKEND_ENV) or _AUTO)
    if name == _AUTO:
        preferred = {"cuda": "mamba_ssm", "cpu": "numba"}.get(device.type, "torch")
        return preferred if _backend_function(preferred) is not None else "torch"
    if _backend_function(name) is None:
        available = ", ".join(available_scan_backends())
        raise ConfigError(
            f"selective scan backend {name!r} cannot be imported here; install its package "
            f"or choose one of: {available}"
        )
    needs = {"numba": "cpu", "mamba_ssm": "cuda"}.get(name)
    if needs is not None and device.type != needs:
        raise ConfigError(
            f"selective scan backend {name!r} runs on {needs} tensors, these are on "
            f"{device.type}; use 'auto' or 'torch'"
        )
    return name


def resolve_scan_backend(device: torch.device | str, backend: str | None = None) -> str:
    """The backend ``ss2d_scan(..., backend=backend)`` runs on tensors on ``device`` now
    (after use_scan_backend, LANDCOVER_SCAN_BACKEND and "auto"); ConfigError if unusable."""
    return _resolve(backend, torch.device(device))


def _check_shapes(u, dt, A, B, C, D, dt_bias) -> None:
    if u.dim() != 4 or A.dim() != 3:
        raise ValueError(
            f"ss2d_scan: u must be (batch, H, W, Di), A (K, Di, N); got "
            f"{tuple(u.shape)} and {tuple(A.shape)}"
        )
    batch, height, width, channels = u.shape
    directions, _, n_states = A.shape
    expected = {
        "dt": (batch, height, width, directions, channels),
        "A": (4, channels, n_states),
        "B": (batch, height, width, directions, n_states),
        "C": (batch, height, width, directions, n_states),
        "D": (directions, channels),
        "dt_bias": (directions, channels),
    }
    given = {"dt": dt, "A": A, "B": B, "C": C, "D": D, "dt_bias": dt_bias}
    for name, shape in expected.items():
        if tuple(given[name].shape) != shape:
            raise ValueError(
                f"ss2d_scan: {name} must have shape {shape} for u of shape {tuple(u.shape)} "
                f"and A of shape {tuple(A.shape)}, got {tuple(given[name].shape)}"
            )
    devices = {x.device for x in (u, *given.values())}
    if len(devices) > 1:
        names = sorted(map(str, devices))
        raise ValueError(f"ss2d_scan: all inputs must be on one device, got {names}")


def ss2d_scan(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """SS2D's selective scan in 4 directions, merged.

    u: (batch, H, W, Di) (after the depthwise conv + SiLU); dt: (batch, H, W, K, Di), the
    step sizes before dt_bias; A: (K, Di, N), negative; B, C: (batch, H, W, K, N);
    D, dt_bias: (K, Di); K = 4 (row-major, column-major, both reversed).
    Per direction: delta = softplus(dt + dt_bias), h_t = exp(delta_t A) h_{t-1} +
    delta_t B_t u_t, y_t = <C_t, h_t> + D u_t. Returns (batch, H, W, Di): each direction's
    y put back at its pixel and summed. ``backend``: see the module docstring.
    """
    _check_shapes(u, dt, A, B, C, D, dt_bias)
    name = _resolve(backend, u.device)
    return _backend_function(name)(u, dt, A, B, C, D, dt_bias)


def ss2d_scan_macs(batch: int, H: int, W: int, K: int, Di: int, N: int) -> int:
    """Multiply-adds of one ss2d_scan, VMamba's convention: 9 per state update plus the
    D skip term."""
    length = H * W
    return 9 * batch * length * K * Di * N + batch * K * Di * length
