"""Raster layers that are not files, in QGIS's Python (headless); used by tests/test_qgis_layers.py.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_layers_harness.py CASE [ARGS...]

Same protocol as tests/qgis_harness.py (whose start() and LogFeedback it uses): one ``RESULT <json>`` line.
Each case builds a layer the old plugin refused or could not pass to the CLI (a GDAL dataset in /vsimem/, a
raster calculator virtual raster, XYZ tiles served from a local folder), runs ``geors:tiles`` (the cheapest
algorithm) on it and reports the output layers, the log and the export folders left in the temp folder.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qgis_harness as H  # noqa: E402
from qgis.core import (  # noqa: E402
    QgsProcessingException,
    QgsProject,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsVectorLayer,
)


def _facts(uri: str) -> dict:
    lyr = QgsVectorLayer(uri, "l", "ogr")
    if not lyr.isValid():
        return {"valid": False}
    e = lyr.extent()
    return {"valid": True, "crs": lyr.crs().authid(), "count": lyr.featureCount(),
            "extent": [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()]}


def _exports_left() -> list[str]:
    return sorted(str(p) for p in Path(tempfile.gettempdir()).glob("geors-export-*"))


def _tiles(layer: QgsRasterLayer, out: str, **extra) -> dict:
    import processing

    QgsProject.instance().addMapLayer(layer)
    fb = H.LogFeedback()
    params = {"SCENE": layer.id(), "TILE": 256, "OVERLAP": 64, "OUTPUT": out, **extra}
    try:
        res = processing.run("geors:tiles", params, feedback=fb)
    except QgsProcessingException as exc:
        return {"message": str(exc), "log": fb.log, "exports_left": _exports_left()}
    return {"tiles": _facts(res["TILES"]), "cores": _facts(res["TILE_CORES"]), "log": fb.log,
            "exports_left": _exports_left(), "message": None}


def _vsimem(scene: str, name: str) -> QgsRasterLayer:
    from osgeo import gdal

    gdal.Translate("/vsimem/geors_test/scene.tif", scene)
    return QgsRasterLayer("/vsimem/geors_test/scene.tif", name, "gdal")


def case_vsimem(scene: str, out: str, name: str, extent: str, resolution: str, keep: str) -> dict:
    """A GeoTIFF copied into GDAL's memory file system (the CLI's process cannot see it)."""
    layer = _vsimem(scene, name)
    extra = {"KEEP_EXPORT": keep == "1"}
    if extent:
        extra["EXTENT"] = extent
    if resolution:
        extra["RESOLUTION"] = float(resolution)
    return {"layer_valid": layer.isValid(), **_tiles(layer, out, **extra)}


def case_virtual(scene: str, out: str) -> dict:
    """The raster calculator's virtual raster (provider 'virtualraster', QGIS >= 3.22): band 1 of the scene."""
    base = QgsRasterLayer(scene, "base", "gdal")
    params = QgsRasterDataProvider.VirtualRasterParameters()
    params.crs, params.extent, params.width, params.height = base.crs(), base.extent(), base.width(), base.height()
    params.formula = '"base@1" * 2'
    inp = QgsRasterDataProvider.VirtualRasterInputLayers()
    inp.name, inp.provider, inp.uri = "base", "gdal", scene
    params.rInputLayers = [inp]
    layer = QgsRasterLayer(QgsRasterDataProvider.encodeVirtualRasterProviderUri(params), "virtual x2",
                           "virtualraster")
    return {"layer_valid": layer.isValid(), "provider": layer.providerType(), **_tiles(layer, out)}


def make_xyz_tiles(scene: str, folder: str, zoom: int) -> int:
    """Web-mercator PNG tiles ``folder/z/x/y.png`` of ``scene`` at ``zoom`` (the tiles a web map would serve)."""
    from osgeo import gdal

    half = 20037508.342789244
    size = 2 * half / 2 ** zoom
    warped = gdal.Warp("/vsimem/geors_test/w.tif", scene, dstSRS="EPSG:3857")
    gt = warped.GetGeoTransform()
    xmin, ymax = gt[0], gt[3]
    xmax, ymin = xmin + gt[1] * warped.RasterXSize, ymax + gt[5] * warped.RasterYSize
    n = 0
    for x in range(int((xmin + half) // size), int((xmax + half) // size) + 1):
        for y in range(int((half - ymax) // size), int((half - ymin) // size) + 1):
            left, top = -half + x * size, half - y * size
            os.makedirs(f"{folder}/{zoom}/{x}", exist_ok=True)
            tile = gdal.Warp("/vsimem/geors_test/t.tif", scene, dstSRS="EPSG:3857", width=256, height=256,
                             outputBounds=(left, top - size, left + size, top), dstAlpha=True)
            gdal.Translate(f"{folder}/{zoom}/{x}/{y}.png", tile, format="PNG")
            n += 1
    return n


def case_xyz(scene: str, tiles_dir: str, zoom: str, out: str, extent: str) -> dict:
    """XYZ tiles from a local folder (file:// URL: offline): the world extent needs EXTENT."""
    n_tiles = make_xyz_tiles(scene, tiles_dir, int(zoom))
    url = Path(tiles_dir).as_uri() + "/{z}/{x}/{y}.png"
    layer = QgsRasterLayer(f"type=xyz&url={url}&zmax={zoom}&zmin={zoom}", "local xyz", "wms")
    without = _tiles(layer, out)
    with_extent = _tiles(layer, out, EXTENT=extent) if extent else None
    return {"layer_valid": layer.isValid(), "web_tiles": n_tiles, "without_extent": without,
            "with_extent": with_extent}


def case_file(scene: str, out: str) -> dict:
    """A local GeoTIFF layer: no export, the CLI reads the file."""
    return _tiles(QgsRasterLayer(scene, "local", "gdal"), out, EXTENT="0,1,0,1 [EPSG:32617]", RESOLUTION=5.0)


class CancelWhileGeorsRuns(H.LogFeedback):
    """Cancels at geors's first tile progress (not during the export, whose progress comes first)."""

    def setProgress(self, p):  # noqa: N802
        super().setProgress(p)
        if p > 0 and any(ln.startswith("command: ") for ln in self.log) and not self.isCanceled():
            self.cancel()


def case_cancel_resume(scene: str, out: str) -> dict:
    """Detect on a /vsimem/ layer, cancelled while geors runs (the export is kept for the resume command), then
    run again with RESUME: a fresh export of the same name and bytes, so geors resumes the run."""
    import processing

    layer = _vsimem(scene, "in memory")
    QgsProject.instance().addMapLayer(layer)
    fb = CancelWhileGeorsRuns()
    message = None
    try:
        processing.run("geors:detect", H.detect_params(layer.id(), out), feedback=fb)
    except QgsProcessingException as exc:
        message = str(exc)
    kept = _exports_left()
    resumed = H.LogFeedback()
    res = processing.run("geors:detect", H.detect_params(layer.id(), out, RESUME=True), feedback=resumed)
    return {"message": message, "log": fb.log, "kept": kept, "resumed_log": resumed.log,
            "summary": json.loads(res["SUMMARY"]), "exports_left": _exports_left()}


def case_cancel_export(scene: str, out: str) -> dict:
    """Tile grid on a /vsimem/ layer, cancelled at the export's first progress: nothing is left behind."""
    import processing

    layer = _vsimem(scene, "in memory")
    QgsProject.instance().addMapLayer(layer)
    fb = H.LogFeedback(cancel_after=0.0)
    try:
        processing.run("geors:tiles", {"SCENE": layer.id(), "OUTPUT": out}, feedback=fb)
        message = None
    except QgsProcessingException as exc:
        message = str(exc)
    return {"message": message, "log": fb.log, "progress": fb.progress, "exports_left": _exports_left(),
            "output_exists": os.path.exists(out)}


def case_mixed(scene: str, out: str) -> dict:
    """Detect on a layer that is not a file, named like the file's stem, and that local file (in this order):
    the export gets another file name (geors names scenes by file name and refuses two scenes of one name)."""
    import processing

    local = QgsRasterLayer(scene, "local", "gdal")
    memory = _vsimem(scene, Path(scene).stem)
    for layer in (local, memory):
        QgsProject.instance().addMapLayer(layer)
    fb = H.LogFeedback()
    try:
        res = processing.run("geors:detect", H.detect_params(scene, out, SCENES=[memory.id(), local.id()]),
                             feedback=fb)
    except QgsProcessingException as exc:
        return {"message": str(exc), "log": fb.log}
    return {"message": None, "summary": json.loads(res["SUMMARY"]), "log": fb.log,
            "exports_left": _exports_left()}


def case_export_twice(scene: str, folder: str) -> dict:
    """Export one layer twice on the same grid: same bytes (so a re-export keeps the scene's --resume
    fingerprint); the size and time of the export."""
    import hashlib

    from geors_qgis.layer_export import export_layer, layer_grid

    layer = _vsimem(scene, "twice")
    grid, why = layer_grid(layer, None, None)
    digests, seconds = [], []
    for i in (1, 2):
        r = export_layer(layer, grid, os.path.join(folder, f"export {i} ü.tif"))
        digests.append(hashlib.sha256(Path(r.path).read_bytes()).hexdigest())
        seconds.append(r.seconds)
    return {"digests": digests, "why": why, "size": [grid.width, grid.height], "seconds": seconds}


if __name__ == "__main__":
    case, args = sys.argv[1], sys.argv[2:]
    app, provider = H.start()
    H.run_case(lambda: globals()[f"case_{case}"](*args))
