"""Plugin object: registers the Processing provider (the algorithms are all in the toolbox)."""

from __future__ import annotations

from qgis.core import QgsApplication


class GeorsPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802
        from .provider import GeorsProvider

        self.provider = GeorsProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
