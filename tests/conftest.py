"""Test-session settings shared by every test module."""

from landcover.engine.runtime import quiet_openmp_waits

# As the command line does: torch's and numba's OpenMP threads must not spin against each
# other (set before any test module imports torch).
quiet_openmp_waits()
