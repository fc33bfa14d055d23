"""Class styles from the model package: paletted rasters and categorized polygons.

Layers that Processing loads into the project are styled by a layer post-processor, in
the main thread after the algorithm ends (never inside processAlgorithm's worker thread).
The files carry the same style (the plugin writes a ``.qml`` beside the GeoTIFF; the
engine stores the polygons' style in the GeoPackage's ``layer_styles``), so outputs of
``qgis_process`` open coloured too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

# Field of the engine's polygons that holds the class id (the class raster's value).
CLASS_ID_FIELD = "class_id"


@dataclass(frozen=True)
class ClassStyle:
    """One class: its value in the class raster, its name and its RGB colour."""

    id: int
    name: str
    color: tuple[int, int, int]

    @property
    def qcolor(self) -> QColor:
        return QColor(*self.color)


def classes_from_json(entries: Any) -> list[ClassStyle]:
    """Class styles from the engine's ``[{"id", "name", "color": [r, g, b]}, ...]``."""
    try:
        classes = [
            ClassStyle(int(entry["id"]), str(entry["name"]), tuple(int(c) for c in entry["color"]))
            for entry in entries
        ]
    except (KeyError, TypeError, ValueError) as error:
        raise QgsProcessingException(
            f"The engine described the model's classes in an unexpected form ({error!r}): "
            "the plugin and the engine come from different versions; reinstall both."
        ) from error
    if not classes or any(len(c.color) != 3 for c in classes):
        raise QgsProcessingException("The engine reported no usable class names and colours.")
    return classes


def paletted_renderer(
    provider: QgsRasterDataProvider, classes: Sequence[ClassStyle], band: int = 1
) -> QgsPalettedRasterRenderer:
    palette = [QgsPalettedRasterRenderer.Class(c.id, c.qcolor, c.name) for c in classes]
    return QgsPalettedRasterRenderer(provider, band, palette)


def categorized_renderer(
    classes: Sequence[ClassStyle], field: str = CLASS_ID_FIELD
) -> QgsCategorizedSymbolRenderer:
    categories = []
    for c in classes:
        symbol = QgsFillSymbol.createSimple({
            "color": ",".join(map(str, (*c.color, 255))),
            "outline_color": ",".join(map(str, (*c.qcolor.darker(150).getRgb()[:3], 255))),
            "outline_width": "0.1",
        })
        categories.append(QgsRendererCategory(c.id, symbol, c.name))
    return QgsCategorizedSymbolRenderer(field, categories)


def apply_class_style(layer: QgsMapLayer, classes: Sequence[ClassStyle]) -> None:
    """Give a class raster its palette, or class polygons their categories."""
    if isinstance(layer, QgsRasterLayer):
        layer.setRenderer(paletted_renderer(layer.dataProvider(), classes))
    elif isinstance(layer, QgsVectorLayer):
        layer.setRenderer(categorized_renderer(classes))
    else:
        return
    layer.triggerRepaint()


def raster_style_path(raster_path: str | Path) -> Path:
    """The ``.qml`` QGIS loads by default for a raster file: same name, suffix .qml."""
    return Path(raster_path).with_suffix(".qml")


def write_raster_style(raster_path: str | Path, classes: Sequence[ClassStyle]) -> Path:
    """Write the paletted style beside the GeoTIFF, so the file opens coloured anywhere."""
    layer = QgsRasterLayer(str(raster_path), "classes", "gdal")
    try:
        if not layer.isValid():
            raise QgsProcessingException(f"QGIS cannot open the class raster {raster_path}.")
        apply_class_style(layer, classes)
        qml = raster_style_path(raster_path)
        message, saved = layer.saveNamedStyle(str(qml))
        if not saved:
            raise QgsProcessingException(f"Cannot write the style {qml}: {message}")
        return qml
    finally:
        del layer  # QGIS can crash at exit while raster layers are alive


class ClassStylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles an output layer once Processing has loaded it (runs in the main thread)."""

    # Processing holds only a C++ pointer: keep the Python objects alive until used.
    _alive: ClassVar[list[ClassStylePostProcessor]] = []

    def __init__(self, classes: Iterable[ClassStyle]):
        super().__init__()
        self.classes = list(classes)

    def postProcessLayer(
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        apply_class_style(layer, self.classes)

    @classmethod
    def attach(cls, context: QgsProcessingContext, layer_id: str, classes: Iterable[ClassStyle]):
        """Style ``layer_id`` when it gets loaded, if this run loads it at all."""
        if not context.willLoadLayerOnCompletion(layer_id):
            return
        processor = cls(classes)
        cls._alive.append(processor)
        context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(processor)
