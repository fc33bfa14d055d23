"""Class and band presets for well-known datasets, and defaults for custom class sets.

``landcover create --classes loveda`` takes its class names, colours, ground sample
distance and input bands from here; ``--classes 5`` gets five generic classes with a
distinct palette. Only the standard library is imported (the command line reads this
before torch is loaded).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

from landcover.engine.errors import ConfigError
from landcover.engine.modelfile import RGB, BandInfo, ClassInfo

# ImageNet statistics in 0..255 units: the usual normalisation for 8-bit RGB imagery.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# Bands without known statistics: maps 0..255 to -2..2.
GENERIC_MEAN = 127.5
GENERIC_STD = 63.75
# Nominal band centres in micrometres (Sentinel-2-like); aerial cameras differ slightly.
NOMINAL_WAVELENGTH_UM = {"blue": 0.49, "green": 0.56, "red": 0.665, "nir": 0.842}
_KNOWN_BAND_STATS = {
    "red": (IMAGENET_MEAN[0], IMAGENET_STD[0]),
    "green": (IMAGENET_MEAN[1], IMAGENET_STD[1]),
    "blue": (IMAGENET_MEAN[2], IMAGENET_STD[2]),
}

MIN_CLASSES = 2
# Class rasters are 8-bit; 255 stays free for no-data / ignore.
MAX_CLASSES = 255


@dataclass(frozen=True)
class ClassPreset:
    """A dataset's classes, ground sample distance and input bands."""

    name: str
    description: str
    classes: tuple[ClassInfo, ...]
    gsd_m: float
    bands: tuple[BandInfo, ...]


def _imagenet_bands(names: tuple[str, str, str]) -> tuple[BandInfo, ...]:
    # ImageNet statistics by position, as the published training code normalises the
    # 3-band image (for Vaihingen's NIR-R-G the NIR band gets the red statistics).
    return tuple(
        BandInfo(name, mean, std, NOMINAL_WAVELENGTH_UM.get(name))
        for name, mean, std in zip(names, IMAGENET_MEAN, IMAGENET_STD, strict=True)
    )


def _classes(named_colors: tuple[tuple[str, RGB], ...]) -> tuple[ClassInfo, ...]:
    return tuple(ClassInfo(index, name, color) for index, (name, color) in enumerate(named_colors))


_ISPRS_CLASSES = _classes((
    ("impervious surfaces", (255, 255, 255)),
    ("building", (0, 0, 255)),
    ("low vegetation", (0, 255, 255)),
    ("tree", (0, 255, 0)),
    ("car", (255, 255, 0)),
    ("clutter", (255, 0, 0)),
))

PRESETS: dict[str, ClassPreset] = {
    "loveda": ClassPreset(
        name="loveda",
        description="LoveDA land cover (urban and rural China), RGB, 0.3 m",
        classes=_classes((
            ("background", (255, 255, 255)),
            ("building", (255, 0, 0)),
            ("road", (255, 255, 0)),
            ("water", (0, 0, 255)),
            ("barren", (159, 129, 183)),
            ("forest", (0, 255, 0)),
            ("agriculture", (255, 195, 128)),
        )),
        gsd_m=0.3,
        bands=_imagenet_bands(("red", "green", "blue")),
    ),
    "vaihingen": ClassPreset(
        name="vaihingen",
        description="ISPRS Vaihingen urban classes, near-infrared/red/green (IRRG), 0.09 m",
        classes=_ISPRS_CLASSES,
        gsd_m=0.09,
        bands=_imagenet_bands(("nir", "red", "green")),
    ),
    "potsdam": ClassPreset(
        name="potsdam",
        description="ISPRS Potsdam urban classes, RGB, 0.05 m",
        classes=_ISPRS_CLASSES,
        gsd_m=0.05,
        bands=_imagenet_bands(("red", "green", "blue")),
    ),
}


def distinct_palette(count: int) -> list[RGB]:
    """``count`` pairwise different, well-separated colours (the same list every time)."""
    colors: list[RGB] = []
    seen: set[RGB] = set()
    step = 0
    while len(colors) < count:
        # Golden-ratio hue steps spread neighbours apart; saturation/value cycle so that
        # later rounds do not repeat earlier hues exactly.
        hue = (step * 0.618033988749895) % 1.0
        saturation = (0.85, 0.55, 1.0)[(step // 7) % 3]
        value = (0.95, 0.7, 0.5)[(step // 21) % 3]
        color = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        step += 1
        if color not in seen:
            seen.add(color)
            colors.append(color)  # type: ignore[arg-type]
    return colors


def generic_classes(count: int) -> tuple[ClassInfo, ...]:
    """``class_0 .. class_{count-1}`` with :func:`distinct_palette` colours."""
    return tuple(
        ClassInfo(index, f"class_{index}", color)
        for index, color in enumerate(distinct_palette(count))
    )


def resolve_class_spec(spec: str) -> ClassPreset | int:
    """``--classes`` value: a preset name (case-insensitive) or a class count."""
    text = spec.strip().lower()
    if text in PRESETS:
        return PRESETS[text]
    if text.isdigit():
        count = int(text)
        if not MIN_CLASSES <= count <= MAX_CLASSES:
            raise ConfigError(
                f"--classes {spec}: give {MIN_CLASSES}..{MAX_CLASSES} classes or a preset "
                f"({', '.join(PRESETS)})"
            )
        return count
    raise ConfigError(
        f"--classes {spec!r}: unknown preset; choose one of {', '.join(PRESETS)} "
        "or give a number of classes"
    )


def default_band(name: str) -> BandInfo:
    """A band by name: ImageNet statistics for red/green/blue, generic 8-bit ones otherwise."""
    key = name.strip().lower()
    mean, std = _KNOWN_BAND_STATS.get(key, (GENERIC_MEAN, GENERIC_STD))
    return BandInfo(name.strip(), mean, std, NOMINAL_WAVELENGTH_UM.get(key))


def default_band_names(count: int) -> list[str]:
    """``red, green, blue`` for three bands, else ``band_1 .. band_N``."""
    if count == 3:
        return ["red", "green", "blue"]
    return [f"band_{index}" for index in range(1, count + 1)]
