"""The selective scan as a plain step-by-step loop: the ground truth the fast paths are tested on.

``selective_scan_reference`` uses mamba-ssm's layout (channels before length, grouped B and
C); SS2D's four scan directions map onto it by ``cross_scan`` (the four sequences of a 2-D
map) and ``cross_merge`` (each output back to its pixel, summed over the directions). Kept
obviously correct, not fast: autograd through the loop gives its gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

SCAN_DIRECTIONS = 4  # row-major, column-major, and both reversed


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t;  y_t = <C_t, h_t> + D * u_t.

    u, delta: (batch, channels, L); A: (channels, N); B, C: (batch, groups, N, L), channel c
    reads group c // (channels // groups); D, delta_bias: (channels,). Returns (batch,
    channels, L) in u's dtype.
    """
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    channels_per_group = u.shape[1] // B.shape[1]
    B = B.repeat_interleave(channels_per_group, dim=1)  # (batch, channels, N, L)
    C = C.repeat_interleave(channels_per_group, dim=1)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, :, :, t]
        ys.append((h * C[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    return y


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """The four scan sequences of a channels-last 2-D map, as (batch, 4, channels, H*W).

    x is (batch, H, W, channels): every direction reads the same map; or (batch, H, W, 4,
    channels): direction k reads x[..., k, :]. Direction 0 is row-major (rows outer), 1
    column-major, 2 and 3 the same orders reversed.
    """
    if x.dim() == 4:
        x = x.unsqueeze(3).expand(-1, -1, -1, SCAN_DIRECTIONS, -1)
    maps = x.permute(0, 3, 4, 1, 2)  # (batch, 4, channels, H, W)
    row_major = maps.flatten(3)
    column_major = maps.transpose(3, 4).flatten(3)
    sequences = [
        row_major[:, 0],
        column_major[:, 1],
        row_major[:, 2].flip(-1),
        column_major[:, 3].flip(-1),
    ]
    return torch.stack(sequences, dim=1)


def cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of ``cross_scan`` for outputs: (batch, 4, channels, H*W) -> (batch, H, W,
    channels), each direction's output put back at its pixel and the four summed."""
    row_major = y[:, 0] + y[:, 2].flip(-1)
    column_major = y[:, 1] + y[:, 3].flip(-1)
    merged = row_major.unflatten(-1, (height, width)) + column_major.unflatten(
        -1, (width, height)
    ).transpose(-1, -2)
    return merged.permute(0, 2, 3, 1).contiguous()


# mamba-ssm's selective scan signature: (u, delta, A, B, C, D, delta_bias) -> y
SequenceScan = Callable[..., torch.Tensor]


def ss2d_scan_via_sequences(
    scan: SequenceScan,
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
) -> torch.Tensor:
    """SS2D on a mamba-ssm-layout scan: cross-scan, one scan over the 4 directions as 4*Di
    channels in 4 groups (group k holds direction k's B and C), cross-merge.

    ``scan(u, delta, A, B, C, D, delta_bias)`` must apply softplus(delta + delta_bias).
    Shapes as in ``landcover.engine.ops.ss2d_scan``.
    """
    batch, height, width, channels = u.shape
    directions, _, states = A.shape
    y = scan(
        cross_scan(u).reshape(batch, directions * channels, height * width),
        cross_scan(dt).reshape(batch, directions * channels, height * width),
        A.reshape(directions * channels, states),
        cross_scan(B),
        cross_scan(C),
        D.reshape(-1),
        dt_bias.reshape(-1),
    )
    return cross_merge(y.view(batch, directions, channels, height * width), height, width)


def ss2d_scan_reference(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
) -> torch.Tensor:
    """The "reference" SS2D backend: cross_scan -> selective_scan_reference -> cross_merge."""

    def scan(u, delta, A, B, C, D, delta_bias):
        return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus=True)

    return ss2d_scan_via_sequences(scan, u, dt, A, B, C, D, dt_bias)
