"""Which raster layers go to geors as they are, and the grid on which the others are exported.

geors reads raster files itself, tile by tile. A QGIS layer whose source is a
plain local file (``gdal`` provider, a path and nothing else) is handed to the
CLI unchanged. Every other layer (WMS/WMTS/XYZ, the raster calculator's
virtual rasters, PostGIS rasters, ``/vsimem/``, ``/vsicurl/`` and other GDAL
virtual file systems, GDAL subdatasets, a file opened with GDAL open options)
is first exported, for an extent and at a resolution, to a temporary GeoTIFF
(``layer_export.py``). This module holds the decisions and the arithmetic of
that export; it imports no QGIS, so it is tested without QGIS
(``tests/test_qgis_layers.py``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

EXTENT = "EXTENT"
RESOLUTION = "RESOLUTION"
KEEP_EXPORT = "KEEP_EXPORT"
EXPORT_PARAMETERS = (EXTENT, RESOLUTION, KEEP_EXPORT)
"""Processing parameters of the plugin alone (no geors option behind them): the export of layers that are not
files. ``tests/test_qgis_dialogs.py`` checks that no CLI option has one of these names."""

MAX_EXPORT_MEGAPIXELS = 2000.0
"""An export larger than this is refused (about 6 GB of RGB pixels, tens of thousands of web tiles): the message
says to narrow the extent or give a coarser resolution."""

_SUBDATASET = re.compile(r"^[A-Za-z][A-Za-z0-9_]+:")  # GPKG:/x.gpkg:t, NETCDF:"x.nc":v, HDF5:..., http://...


class ExportError(ValueError):
    """An export that cannot be set up (no extent for a world-wide layer, no resolution, too large, ...)."""


def local_raster_file(provider: str, source: str, is_file: Callable[[str], bool] = os.path.isfile) -> str | None:
    """The file geors can read for a layer of ``provider`` with ``source``, or None when it must be exported.

    A file: the ``gdal`` provider with a source that is a path alone, naming an existing file (GeoTIFF, COG,
    VRT, JPEG2000...). Not a file: any other provider; ``/vsi...`` sources (``/vsimem/`` lives in QGIS's memory,
    ``/vsicurl/`` on a server; the CLI fingerprints a scene by the bytes of its files for ``--resume``); GDAL
    subdataset and URL syntax (``GPKG:...``, ``NETCDF:...``, ``https://...``); a source with a ``|`` suffix
    (``|option:OVERVIEW_LEVEL=1`` open options, ``|layername=``), which the CLI could not pass on and which
    change what is read. The bands the layer's renderer shows are not part of the source: a local file goes
    to geors whole and ``BANDS`` (``--bands``) chooses the bands, as an export keeps every band too.
    """
    if provider != "gdal" or not source:
        return None
    path, bar, _suffix = source.partition("|")
    if bar or path.lower().startswith("/vsi"):
        return None
    if _SUBDATASET.match(path) and not re.match(r"^[A-Za-z]:[\\/]", path):  # C:\... is a Windows path
        return None
    return path if is_file(path) else None


@dataclass(frozen=True)
class ExportGrid:
    """The pixel grid of an export, in the layer's CRS: bounds, pixel size and size in pixels."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    res_x: float
    res_y: float
    width: int
    height: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    def size_text(self, bands: int, bytes_per_sample: int) -> str:
        """``"595 x 401 px (0.24 MP), 4 band(s), 0.9 MB uncompressed"``."""
        raw = self.width * self.height * max(bands, 1) * max(bytes_per_sample, 1) / 1e6
        return (f"{self.width} x {self.height} px ({self.megapixels:.2f} MP), {bands} band(s), "
                f"{raw:.1f} MB uncompressed")


def choose_resolution(given: float | None, native: tuple[float, float] | None, service: list[float],
                      layer: str) -> tuple[tuple[float, float], str]:
    """The pixel size ``(x, y)`` of an export in layer units and where it comes from.

    ``given`` (RESOLUTION) wins; else the layer's own pixel size (``native``: a layer with a size in pixels);
    else the finest resolution the service has (``service``: an XYZ/WMTS layer's zoom levels, i.e. its
    highest zoom level, the detail the objects were drawn at); else a WMS without levels: RESOLUTION is
    required.
    """
    if given is not None and given > 0:
        return (float(given), float(given)), f"{given:g} layer units per pixel (RESOLUTION)"
    if given is not None:
        raise ExportError(f"RESOLUTION must be > 0 (got {given:g}); leave it empty for the layer's own pixel size.")
    if native and native[0] > 0 and native[1] > 0:
        return (float(native[0]), float(native[1])), f"the layer's own pixel size ({native[0]:g} x {native[1]:g})"
    levels = sorted(r for r in service if r > 0)
    if levels:
        return (levels[0], levels[0]), (f"{levels[0]:g} layer units per pixel, the finest zoom level of the "
                                        "service (set RESOLUTION for a coarser, smaller export)")
    raise ExportError(f"The layer '{layer}' has no pixel size of its own (a WMS): set 'Resolution for layers that "
                      "are not files' (RESOLUTION, in layer units per pixel, e.g. 0.3 for 30 cm in a metric CRS) "
                      "under Advanced parameters.")


def choose_extent(given: tuple[float, float, float, float] | None,
                  bounds: tuple[float, float, float, float] | None, layer: str) -> tuple[float, float, float, float]:
    """The area to export, in the layer's CRS: ``given`` (EXTENT, already in the layer's CRS) cut to the
    layer's ``bounds``; the whole layer when no extent is given. ``bounds`` is None for a layer without a size
    of its own (XYZ, WMS: the whole world), which needs an extent."""
    if given is None:
        if bounds is None:
            raise ExportError(
                f"The layer '{layer}' covers the whole world (a web map service): set 'Extent for layers that are "
                "not files' (EXTENT, under Advanced parameters: draw it on the map canvas or use the canvas "
                "extent) to the area geors should work on.")
        return bounds
    xmin, ymin, xmax, ymax = given
    if bounds is not None:
        xmin, ymin = max(xmin, bounds[0]), max(ymin, bounds[1])
        xmax, ymax = min(xmax, bounds[2]), min(ymax, bounds[3])
    if not (xmax > xmin and ymax > ymin):
        raise ExportError(f"EXTENT does not overlap the layer '{layer}': choose an extent inside it.")
    return xmin, ymin, xmax, ymax


def export_grid(extent: tuple[float, float, float, float], res: tuple[float, float],
                origin: tuple[float, float] | None = None, eps: float = 1e-6) -> ExportGrid:
    """The export grid over ``extent`` with pixels of ``res``.

    With ``origin`` (the layer's top-left corner) the grid is snapped outwards onto the layer's pixel grid, so
    at the layer's own pixel size every exported pixel is one pixel of the layer, not resampled. Without it
    (web services) the grid starts at the extent's top-left corner. ``eps`` (a fraction of a pixel) keeps
    floating-point noise from adding a row or column.
    """
    xmin, ymin, xmax, ymax = extent
    rx, ry = res
    if origin is not None:
        ox, oy = origin
        xmin = ox + math.floor((xmin - ox) / rx + eps) * rx
        xmax = ox + math.ceil((xmax - ox) / rx - eps) * rx
        ymax = oy - math.floor((oy - ymax) / ry + eps) * ry
        ymin = oy - math.ceil((oy - ymin) / ry - eps) * ry
    width = max(1, math.ceil((xmax - xmin) / rx - eps))
    height = max(1, math.ceil((ymax - ymin) / ry - eps))
    return ExportGrid(xmin, ymax - height * ry, xmin + width * rx, ymax, rx, ry, width, height)


def check_size(grid: ExportGrid, layer: str, limit_mp: float = MAX_EXPORT_MEGAPIXELS) -> None:
    """Refuse an export beyond ``limit_mp`` megapixels, saying what to change."""
    if grid.megapixels > limit_mp:
        raise ExportError(
            f"Exporting the layer '{layer}' would make {grid.width} x {grid.height} px ({grid.megapixels:,.0f} MP, "
            f"more than {limit_mp:,.0f} MP) at {grid.res_x:g} layer units per pixel: choose a smaller EXTENT or a "
            "coarser RESOLUTION, or save the area you need as a GeoTIFF first (Export > Save As...).")


def export_file_name(layer: str, taken: set[str]) -> str:
    """A GeoTIFF name for an export of the layer named ``layer``: its letters and digits (any script), other
    characters as ``_``; ``_2``, ``_3``... when the name is in ``taken``. geors names the scene after the file
    (the ``scene`` field of every result and the run's layer group), so the name is the layer's."""
    stem = re.sub(r"[^\w.-]+", "_", layer, flags=re.UNICODE).strip("._")[:80] or "layer"
    name, n = f"{stem}.tif", 1
    while name.lower() in {t.lower() for t in taken}:
        n += 1
        name = f"{stem}_{n}.tif"
    return name
