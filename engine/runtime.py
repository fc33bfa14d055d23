"""Process-wide settings for the engine's own processes (the CLI and benchmark children).

Library callers keep their process as it is: only entry points call these.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Serve every allocation from glibc's heap and never give freed memory back to the OS.

    By default glibc maps each large block (a feature map) fresh from the OS and unmaps it
    on free, so every forward pass page-faults all its activations in again: measured on a
    1024x1024 UNetMamba forward, 960k page faults and ~25% more CPU time. The cost is that
    the process keeps its peak memory until it exits. Returns False where this is not glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def quiet_openmp_waits() -> None:
    """Let idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``,
    unless the user set it). Must run before torch or numba start their thread pools.

    torch's and numba's OpenMP pools take turns on the same cores (convolutions, then the
    selective scan); spinning threads of one pool steal the cores the other needs. Measured
    on 2 cores: a UNetMamba training step (2x256x256) 14.6 s spinning, 1.8 s passive.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
