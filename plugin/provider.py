"""The "Land cover" Processing provider (id ``landcover``)."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from landcover.plugin.segment_algorithm import SegmentLandCoverAlgorithm
from landcover.plugin.settings import ENGINE_PYTHON_SETTING, ICON_PATH
from landcover.plugin.setup_algorithm import SetUpEngineAlgorithm


class LandCoverProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "landcover"

    def name(self) -> str:
        return "Land cover"

    def longName(self) -> str:  # QGIS's names from here on
        return "Land cover segmentation (Mamba-based networks)"

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def svgIconPath(self) -> str:
        return str(ICON_PATH)

    def load(self) -> bool:
        _add_settings(self.name())
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        _remove_settings()

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(SegmentLandCoverAlgorithm())
        self.addAlgorithm(SetUpEngineAlgorithm())

    # The engine writes GeoTIFF rasters and GeoPackage vectors only.
    def supportedOutputRasterLayerExtensions(self) -> list[str]:
        return ["tif"]

    def defaultRasterFileExtension(self) -> str:
        return "tif"

    def supportedOutputVectorLayerExtensions(self) -> list[str]:
        return ["gpkg"]

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:
        return "gpkg"


def _add_settings(group: str) -> None:
    """The provider's page in Settings > Options > Processing > Providers."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig, Setting
    except ImportError:  # Processing's Python side absent: the QgsSettings key still works
        return
    ProcessingConfig.settingIcons[group] = QIcon(str(ICON_PATH))
    ProcessingConfig.addSetting(
        Setting(
            group,
            ENGINE_PYTHON_SETTING,
            "Engine Python interpreter (blank: the one recorded at set-up)",
            "",
            valuetype=Setting.FILE,
        )
    )
    ProcessingConfig.readSettings()


def _remove_settings() -> None:
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        return
    if ENGINE_PYTHON_SETTING in ProcessingConfig.settings:
        ProcessingConfig.removeSetting(ENGINE_PYTHON_SETTING)
