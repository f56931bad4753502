"""geors for QGIS: a Processing provider that runs the geors CLI of a separate Python environment."""


def classFactory(iface):  # noqa: N802 (QGIS plugin entry point)
    from .plugin import GeorsPlugin

    return GeorsPlugin(iface)
