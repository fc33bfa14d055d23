"""Selective scan kernels for the Mamba models: a reference, a fast CPU path (numba), a
pure-torch path and mamba-ssm's CUDA kernel behind one dispatcher, ``ss2d_scan``.

Importing this package is light: numba and mamba-ssm are imported on first use.
"""

from landcover.engine.ops.scan_reference import (
    cross_merge,
    cross_scan,
    selective_scan_reference,
)
from landcover.engine.ops.selective_scan import (
    SCAN_BACKEND_ENV,
    SCAN_BACKENDS,
    available_scan_backends,
    resolve_scan_backend,
    ss2d_scan,
    ss2d_scan_macs,
    use_scan_backend,
)

__all__ = [
    "SCAN_BACKENDS",
    "SCAN_BACKEND_ENV",
    "available_scan_backends",
    "cross_merge",
    "cross_scan",
    "resolve_scan_backend",
    "selective_scan_reference",
    "ss2d_scan",
    "ss2d_scan_macs",
    "use_scan_backend",
]
