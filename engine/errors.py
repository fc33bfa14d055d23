"""Errors the engine raises for bad input.

Each subclasses a built-in (so callers can catch ``ValueError`` or ``FileNotFoundError``
as usual) and :class:`LandcoverError`, which the command line turns into one line on
stderr and a non-zero exit code instead of a traceback. Messages say what to do.
"""


class LandcoverError(Exception):
    """Marker base class: an error caused by the user's input, reported without traceback."""


class ModelFileError(LandcoverError, ValueError):
    """A model package that is missing, truncated, corrupted or does not fit."""


class ModelFileNotFoundError(LandcoverError, FileNotFoundError):
    """A model package path that does not exist."""


class InputRasterError(LandcoverError, ValueError):
    """An input raster that cannot be segmented as given."""


class ConfigError(LandcoverError, ValueError):
    """A bad option or configuration value."""


class OutputPathError(LandcoverError, OSError):
    """An output path that cannot be written (missing folder, a directory, no permission)."""


class SegmentationCancelled(LandcoverError):
    """A segmentation stopped on request; its partial outputs have been removed."""
