"""Segment land cover: a QGIS Processing plugin backed by a PyTorch engine.

This folder is both the QGIS plugin and the Python package ``landcover``.
QGIS calls :func:`classFactory`; everything else imports ``landcover.engine``.
"""


def classFactory(iface):  # (QGIS's name, not snake_case)
    from landcover.plugin.plugin import LandCoverPlugin

    return LandCoverPlugin(iface)
