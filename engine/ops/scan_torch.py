"""SS2D selective scan in plain PyTorch: the fallback without numba, and the GPU path that
needs no compilation when mamba-ssm is not installed.

Chunked two-level scan. Each direction's sequence of L steps is cut into C chunks of T
steps (C * T >= L, the tail padded with identity steps, delta = 0). The recurrence
h_t = decay_t * h_{t-1} + drive_t then runs in three stages:

1. all chunks at once, T steps, from h = 0: each chunk's local final state;
2. C steps along the chunks: the true state entering each chunk, carried with the
   chunk's total decay exp(A * sum(delta));
3. all chunks at once again, T steps, from the true entry states: y_t = <C_t, h_t>.

So every Python-level step works on a (batch, 4, Di, N, C) tensor and no tensor of a
whole sequence's states is ever built; the decays exp(delta_t A) are computed step by
step. Under autograd, stages 1 and 3 are checkpointed in segments of steps (recomputed in
the backward pass), so memory stays bounded too. C is picked so that each step has
enough work to hide Python's overhead (more on GPUs), and so that it is the innermost,
contiguous dimension every elementwise operation vectorises over.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from landcover.engine.ops.scan_reference import cross_merge, cross_scan

# values in one step's (batch, 4, Di, N, C) tensor to aim for: enough work per step to
# hide Python's per-operation overhead
_STEP_VALUES = {"cpu": 1 << 21, "cuda": 1 << 22}
_MIN_CHUNKS = 64  # chunks are the innermost, vectorised dimension
_CHECKPOINT_STEPS = 16  # steps per checkpointed segment under autograd


def _run_steps(h, delta, drive_scale, B, C, A, emit: bool):
    """Steps of h = exp(delta A) h + drive_scale B for all chunks at once.

    h: (b, K, Di, N, C); delta, drive_scale (= delta u): (steps, b, K, Di, 1, C); B, C:
    (steps, b, K, 1, N, C); A: (K, Di, N, 1). Returns the last h and, if emit, the outputs
    <C_t, h_t> as (b, K, Di, C, steps).
    """
    ys = []
    for step in range(delta.shape[0]):
        decay = torch.exp(delta[step] * A)
        h = torch.addcmul(drive_scale[step] * B[step], decay, h)
        if emit:
            ys.append((h * C[step]).sum(-2))
    return h, torch.stack(ys, -1) if emit else None


def _scan_chunks(h, delta, drive_scale, B, C, A, emit: bool, needs_grad: bool):
    """_run_steps over all steps, in checkpointed segments when a gradient is needed."""
    if not needs_grad:
        return _run_steps(h, delta, drive_scale, B, C, A, emit)
    ys = []
    for start in range(0, delta.shape[0], _CHECKPOINT_STEPS):
        part = slice(start, start + _CHECKPOINT_STEPS)
        segment = (delta[part], drive_scale[part], B[part], C[part])
        h, y = checkpoint(_run_steps, h, *segment, A, emit, use_reentrant=False)
        ys.append(y)
    return h, torch.cat(ys, -1) if emit else None


def _chunk_count(length: int, values_per_chunk: int, device: torch.device) -> int:
    """About sqrt(L) chunks balances the T steps of stages 1 and 3 against the C of
    stage 2; more where a step's tensors would stay below the per-step target; at least
    _MIN_CHUNKS, at most L."""
    budget = _STEP_VALUES.get(device.type, _STEP_VALUES["cpu"])
    chunks = max(math.isqrt(length), _MIN_CHUNKS, budget // values_per_chunk)
    return min(chunks, length)


def _as_steps(sequences: torch.Tensor, chunks: int, steps: int) -> torch.Tensor:
    """(b, K, X, L) -> (steps, b, K, X, chunks), zero-padded to chunks * steps, contiguous."""
    padded = F.pad(sequences, (0, chunks * steps - sequences.shape[-1]))
    return padded.unflatten(-1, (chunks, steps)).movedim(-1, 0).contiguous()


def ss2d_scan_torch(u, dt, A, B, C, D, dt_bias) -> torch.Tensor:
    """The "torch" SS2D backend (any device; computes in fp32, or fp64 for fp64 inputs);
    shapes as in ``ss2d_scan``."""
    batch, height, width, channels = u.shape
    directions, _, n_states = A.shape
    out_dtype = u.dtype
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, dt, A, B, C, D, dt_bias = (x.to(dtype) for x in (u, dt, A, B, C, D, dt_bias))
    needs_grad = torch.is_grad_enabled() and any(
        x.requires_grad for x in (u, dt, A, B, C, D, dt_bias)
    )
    length = height * width
    chunks = _chunk_count(length, batch * directions * channels * n_states, u.device)
    steps = -(-length // chunks)

    u_seq = cross_scan(u)  # (b, K, Di, L)
    delta_seq = F.softplus(cross_scan(dt) + dt_bias[..., None])
    delta = _as_steps(delta_seq, chunks, steps).unsqueeze(-2)  # (T, b, K, Di, 1, C)
    drive_scale = _as_steps(delta_seq * u_seq, chunks, steps).unsqueeze(-2)
    B_steps = _as_steps(cross_scan(B), chunks, steps).unsqueeze(-3)  # (T, b, K, 1, N, C)
    C_steps = _as_steps(cross_scan(C), chunks, steps).unsqueeze(-3)
    A_steps = A[..., None]  # (K, Di, N, 1)
    inputs = (delta, drive_scale, B_steps, C_steps, A_steps)

    zero = u.new_zeros(batch, directions, channels, n_states, chunks)
    local_end, _ = _scan_chunks(zero, *inputs, emit=False, needs_grad=needs_grad)
    chunk_decay = torch.exp(delta.sum(0) * A_steps)  # (b, K, Di, N, C)
    entry = [zero[..., 0]]
    for chunk in range(chunks - 1):
        entry.append(chunk_decay[..., chunk] * entry[-1] + local_end[..., chunk])
    h0 = torch.stack(entry, -1)
    _, y = _scan_chunks(h0, *inputs, emit=True, needs_grad=needs_grad)
    y = y.flatten(-2)[..., :length] + D[..., None] * u_seq  # (b, K, Di, L)
    return cross_merge(y, height, width).to(out_dtype)
