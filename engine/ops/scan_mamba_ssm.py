"""SS2D selective scan on mamba-ssm's CUDA kernel (optional extra ``landcover[cuda]``).

Importing this module fails with ImportError where mamba-ssm is not installed; the
dispatcher in ``selective_scan`` only imports it on demand. The four directions become
4*Di channels of one selective_scan_fn call, with B and C as 4 groups (group k is
direction k's), as VMamba does.
"""

from __future__ import annotations

import torch
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

from landcover.engine.ops.scan_reference import ss2d_scan_via_sequences


def _selective_scan_cuda(u, delta, A, B, C, D, delta_bias) -> torch.Tensor:
    # the kernel wants fp32 A, D and delta_bias whatever the activations' dtype
    return selective_scan_fn(
        u,
        delta,
        A.float(),
        B,
        C,
        D.float(),
        z=None,
        delta_bias=delta_bias.float(),
        delta_softplus=True,
    )


def ss2d_scan_mamba_ssm(u, dt, A, B, C, D, dt_bias) -> torch.Tensor:
    """The "mamba_ssm" SS2D backend (CUDA tensors); shapes as in ``ss2d_scan``."""
    return ss2d_scan_via_sequences(_selective_scan_cuda, u, dt, A, B, C, D, dt_bias)
