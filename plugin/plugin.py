"""The QGIS plugin object: registers the "Land cover" Processing provider."""

from __future__ import annotations

from qgis.core import QgsApplication

from landcover.plugin.provider import LandCoverProvider


class LandCoverPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider: LandCoverProvider | None = None

    def initProcessing(self) -> None:  # QGIS's names; qgis_process calls only this one
        if self.provider is None:
            self.provider = LandCoverProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
