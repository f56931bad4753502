"""Raster layers that are not files, exported to a temporary GeoTIFF for geors (PyQGIS).

:func:`raster_source.local_raster_file` decides; a local file goes to the CLI as
it is. Any other layer is written by :func:`export_layer` (QgsRasterFileWriter
over a QgsRasterPipe holding a clone of the layer's data provider: every band,
raw values, the layer's CRS; tiled, DEFLATE-compressed) on the grid that
:mod:`raster_source` computes from the algorithm's EXTENT and RESOLUTION.
:class:`SceneExports` keeps the files of one algorithm run and removes them at
its end, unless KEEP_EXPORT is set or the run was cancelled (the command that
continues it names them).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterExtent,
    QgsProcessingParameterNumber,
    QgsRasterBlockFeedback,
    QgsRasterDataProvider,
    QgsRasterFileWriter,
    QgsRasterPipe,
    QgsRectangle,
)

from .raster_source import (
    EXTENT,
    KEEP_EXPORT,
    RESOLUTION,
    ExportError,
    ExportGrid,
    check_size,
    choose_extent,
    choose_resolution,
    export_file_name,
    export_grid,
    local_raster_file,
)

CREATE_OPTIONS = ["TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"]

# bytes per sample of Qgis.DataType values (for the size estimate; ARGB32 = 4 bytes per pixel, written as RGBA)
_BYTES = {1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 8, 8: 4, 9: 4, 10: 8, 11: 16, 12: 1, 13: 1}


def export_parameters() -> list:
    """EXTENT, RESOLUTION and KEEP_EXPORT (advanced): how layers that are not files are exported."""
    extent = QgsProcessingParameterExtent(EXTENT, "Extent for layers that are not files (WMS/XYZ, virtual, "
                                                  "in-memory; empty = the whole layer)", None, True)
    extent.setHelp("Layers that are not raster files are exported for this extent to a temporary GeoTIFF first. "
                   "Required for web map services (XYZ/WMS cover the whole world); empty = the layer's extent.")
    res = QgsProcessingParameterNumber(RESOLUTION, "Resolution for layers that are not files (layer units per "
                                                   "pixel; empty = the layer's own)",
                                       QgsProcessingParameterNumber.Double, None, True, 0.0)
    res.setHelp("Ground sample distance of the export, in the layer's CRS units (0.3 = 30 cm in a metric CRS). "
                "Empty: the layer's own pixel size, or the finest zoom level of an XYZ/WMTS service; a WMS "
                "without zoom levels needs it.")
    keep = QgsProcessingParameterBoolean(KEEP_EXPORT, "Keep the exported GeoTIFF of layers that are not files",
                                         False, True)
    keep.setHelp("The temporary GeoTIFF is removed after the run unless this is set (its path is in the log).")
    out = [extent, res, keep]
    for p in out:
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return out


@dataclass
class ExportResult:
    path: str
    grid: ExportGrid
    bands: int
    seconds: float
    file_bytes: int


def layer_grid(layer, extent: QgsRectangle | None, resolution: float | None) -> tuple[ExportGrid, str]:
    """The export grid of ``layer`` for ``extent`` (in the layer's CRS, or None) and ``resolution`` (or None),
    and where the pixel size came from; :class:`raster_source.ExportError` when it cannot be chosen."""
    provider = layer.dataProvider()
    sized = bool(provider.capabilities() & QgsRasterDataProvider.Size) and provider.xSize() > 0 \
        and provider.ySize() > 0
    full = layer.extent()
    bounds = (full.xMinimum(), full.yMinimum(), full.xMaximum(), full.yMaximum()) if sized else None
    given = None if extent is None or extent.isNull() or extent.isEmpty() else \
        (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum())
    area = choose_extent(given, bounds, layer.name())
    native = (full.width() / provider.xSize(), full.height() / provider.ySize()) if sized else None
    res, why = choose_resolution(resolution, native, list(provider.nativeResolutions() or []), layer.name())
    # the pixel grid starts at the layer's top-left corner: a raster's own grid, or an XYZ service's (its extent
    # is the tile matrix, so at the finest zoom level every exported pixel is one pixel of a tile)
    origin = (full.xMinimum(), full.yMaximum()) if not full.isEmpty() and math.isfinite(full.xMinimum()) else None
    grid = export_grid(area, res, origin)
    check_size(grid, layer.name())
    return grid, why


def export_layer(layer, grid: ExportGrid, path: str, feedback=None) -> ExportResult:
    """Write ``layer``'s pixels on ``grid`` to the GeoTIFF ``path`` in the layer's CRS (raw values, every band;
    a web layer's RGBA image as four bytes). Progress and cancel follow ``feedback`` (a QgsProcessingFeedback)."""
    provider = layer.dataProvider().clone()
    pipe = QgsRasterPipe()
    if not pipe.set(provider):
        raise QgsProcessingException(f"The layer '{layer.name()}' cannot be read for export (provider "
                                     f"'{layer.providerType()}').")
    writer = QgsRasterFileWriter(path)
    writer.setOutputFormat("GTiff")
    writer.setCreateOptions(CREATE_OPTIONS)
    block_feedback = QgsRasterBlockFeedback()
    if feedback is not None:
        feedback.canceled.connect(block_feedback.cancel)
        block_feedback.progressChanged.connect(feedback.setProgress)
    rect = QgsRectangle(grid.xmin, grid.ymin, grid.xmax, grid.ymax)
    started = time.perf_counter()
    try:
        err = writer.writeRaster(pipe, grid.width, grid.height, rect, layer.crs(), layer.transformContext(),
                                 block_feedback)
    finally:
        if feedback is not None:
            feedback.canceled.disconnect(block_feedback.cancel)
            block_feedback.progressChanged.disconnect(feedback.setProgress)
    seconds = time.perf_counter() - started
    if block_feedback.isCanceled() or (feedback is not None and feedback.isCanceled()):
        raise QgsProcessingException(f"Cancelled while exporting the layer '{layer.name()}'.")
    if err != QgsRasterFileWriter.NoError or not os.path.isfile(path):
        raise QgsProcessingException(f"Exporting the layer '{layer.name()}' to {path} failed (QgsRasterFileWriter "
                                     f"error {int(err)}). Save the area as a GeoTIFF yourself (Export > Save As...) "
                                     "and run geors on that file.")
    return ExportResult(path, grid, _bands(provider), seconds, os.path.getsize(path))


def _bands(provider) -> int:
    """Bands of the exported file: a web layer's ARGB32 image is written as four byte bands (RGBA)."""
    return 4 if int(provider.dataType(1)) in (12, 13) else provider.bandCount()


class SceneExports:
    """The scene files of one algorithm run: local files as they are, other layers exported (and removed)."""

    def __init__(self, alg, parameters: dict, context, feedback):
        self.alg, self.parameters, self.context, self.feedback = alg, parameters, context, feedback
        self.folder: str | None = None
        self.exported: list[ExportResult] = []
        self.names: set[str] = set()
        self.cli_started = False  # set by the algorithm when geors runs on the files (cancel keeps them then)

    def reserve_file_names(self, layers) -> None:
        """Take the file names of the local files among ``layers`` first (geors names scenes by file name), so
        that an export listed before one of them is not given its name."""
        for layer in layers:
            local = local_raster_file(layer.providerType(), layer.source()) if layer is not None else None
            if local is not None:
                self.names.add(os.path.basename(local))

    def path(self, layer, param: str) -> str:
        """The file geors reads for ``layer`` (given as ``param``): its own file, or a fresh export."""
        if layer is None:
            raise QgsProcessingException(f"{param}: no raster layer given.")
        local = local_raster_file(layer.providerType(), layer.source())
        if local is not None:
            if self.parameters.get(EXTENT) or self.parameters.get(RESOLUTION):
                self.feedback.pushInfo(f"{param}: '{layer.name()}' is a raster file: geors reads it whole, tile by "
                                       "tile (EXTENT and RESOLUTION apply to layers that are not files).")
            self.names.add(os.path.basename(local))  # geors names scenes by file name: exports take others
            return local
        if not layer.isValid():
            raise QgsProcessingException(f"{param}: the layer '{layer.name()}' is not valid (provider "
                                         f"'{layer.providerType()}', source '{layer.source()[:200]}'): fix or "
                                         "remove it.")
        grid, why = self._grid(layer)
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="geors-export-")
        name = export_file_name(layer.name(), self.names)
        self.names.add(name)
        out = os.path.join(self.folder, name)
        fb = self.feedback
        bytes_per = _BYTES.get(int(layer.dataProvider().dataType(1)), 1)
        bands = _bands(layer.dataProvider())
        fb.pushInfo(f"{param}: the layer '{layer.name()}' is not a raster file (provider '{layer.providerType()}'): "
                    f"exporting {grid.size_text(bands, bytes_per)} at {why}, extent {grid.xmin:.10g}, "
                    f"{grid.ymin:.10g} : {grid.xmax:.10g}, {grid.ymax:.10g} ({layer.crs().authid() or 'layer CRS'}) "
                    f"to {out}")
        fb.setProgressText(f"exporting '{layer.name()}' ({grid.width} x {grid.height} px)")
        try:
            result = export_layer(layer, grid, out, fb)
        except Exception:
            if os.path.exists(out):  # a half-written file (cancelled, failed) is of no use to anyone
                os.remove(out)
            raise
        self.exported.append(result)
        fb.pushInfo(f"exported '{layer.name()}': {grid.width} x {grid.height} px ({grid.megapixels:.2f} MP), "
                    f"{result.bands} band(s), {result.file_bytes / 1e6:.1f} MB on disk, in {result.seconds:.1f} s")
        return out

    def _grid(self, layer) -> tuple[ExportGrid, str]:
        alg, params, context = self.alg, self.parameters, self.context
        extent = None
        if params.get(EXTENT):
            # reprojected into the layer's CRS when the extent names its own (an extent without CRS is taken
            # to be in the layer's)
            extent = alg.parameterAsExtent(params, EXTENT, context, layer.crs())
        resolution = alg.parameterAsDouble(params, RESOLUTION, context) if params.get(RESOLUTION) not in (
            None, "") else None
        try:
            return layer_grid(layer, extent, resolution)
        except ExportError as exc:
            raise QgsProcessingException(str(exc)) from None

    def finish(self, keep: bool | None = None) -> None:
        """Remove the exports, unless KEEP_EXPORT is set or geors was cancelled while it ran on them (its
        resume command names them); say where kept files are."""
        if self.folder is None:
            return
        cancelled = self.feedback.isCanceled() and self.cli_started and bool(self.exported)
        if keep is None:
            keep = self.alg.parameterAsBool(self.parameters, KEEP_EXPORT, self.context) \
                if self.parameters.get(KEEP_EXPORT) else False
        if keep or cancelled:
            files = ", ".join(r.path for r in self.exported) or self.folder
            why = "KEEP_EXPORT is set" if keep else "the run was cancelled: the command that continues it reads them"
            self.feedback.pushInfo(f"The exported GeoTIFF(s) are kept ({why}): {files}")
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        self.feedback.pushInfo(f"Removed the exported GeoTIFF(s) ({self.folder}).")
