"""What exporting a raster layer that is not a file costs the QGIS plugin (docs/qgis.md, "Layers that are not
files"). Run with QGIS's Python, one thread:

    GDAL_NUM_THREADS=1 OMP_NUM_THREADS=1 QT_QPA_PLATFORM=offscreen /usr/bin/python3 \\
        experiments/qgis_export_cost.py SCENE.tif [--zoom 20] [--repeat 2]

SCENE.tif is any georeferenced RGB GeoTIFF (the figures in the docs: a 2 x 2 mosaic of the NEON
2019_YELL_2_528000_4978000 crop, made by ``--make-scene OUT.tif``, which needs rasterio, so run that part with
the geors environment's Python). For each kind of layer the plugin exports (a copy of the scene in GDAL's
/vsimem/, the raster calculator's virtual raster of band 1, XYZ tiles of the scene served from a local folder),
it times layer_export.export_layer on the grid the algorithms use and prints one JSON line per export: pixels,
bands, seconds, MB on disk. The XYZ tiles are made first (not timed); reading them from disk leaves out the
network time of a real web service.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEON = Path.home() / ".cache/geors/samples/neon/2019_YELL_2_528000_4978000_image_crop2.png"


def make_scene(out: str) -> None:
    """A 2 x 2 mosaic (flipped copies) of the NEON YELL crop as a tiled DEFLATE GeoTIFF, UTM 12N at 0.1 m."""
    import numpy as np
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    a = np.asarray(Image.open(NEON).convert("RGB")).transpose(2, 0, 1)
    top = np.concatenate([a, a[:, :, ::-1]], axis=2)
    mosaic = np.concatenate([top, top[:, ::-1, :]], axis=1)
    with rasterio.open(out, "w", driver="GTiff", width=mosaic.shape[2], height=mosaic.shape[1], count=3,
                       dtype="uint8", crs="EPSG:32612", transform=from_origin(528000.0, 4978000.0, 0.1, 0.1),
                       tiled=True, blockxsize=512, blockysize=512, compress="deflate") as dst:
        dst.write(mosaic)
    print(out, mosaic.shape)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scene", nargs="?")
    ap.add_argument("--zoom", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--make-scene")
    args = ap.parse_args()
    if args.make_scene:
        make_scene(args.make_scene)
        return
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO / "qgis_plugin"))
    import qgis_harness as H
    import qgis_layers_harness as L
    from geors_qgis.layer_export import export_layer, layer_grid
    from qgis.core import QgsProject, QgsRasterDataProvider, QgsRasterLayer, QgsRectangle

    app, _ = H.start(register=False)
    work = tempfile.mkdtemp(prefix="geors-export-cost-")
    try:
        scene = args.scene
        base = QgsRasterLayer(scene, "base", "gdal")
        layers = {"vsimem (gdal provider, in memory)": L._vsimem(scene, "mem")}
        params = QgsRasterDataProvider.VirtualRasterParameters()
        params.crs, params.extent = base.crs(), base.extent()
        params.width, params.height = base.width(), base.height()
        params.formula = '"base@1"'
        inp = QgsRasterDataProvider.VirtualRasterInputLayers()
        inp.name, inp.provider, inp.uri = "base", "gdal", scene
        params.rInputLayers = [inp]
        layers["virtualraster (band 1, Float64)"] = QgsRasterLayer(
            QgsRasterDataProvider.encodeVirtualRasterProviderUri(params), "virtual", "virtualraster")
        started = time.perf_counter()
        n_tiles = L.make_xyz_tiles(scene, f"{work}/tiles", args.zoom)
        print(json.dumps({"xyz_tiles_made": n_tiles, "zoom": args.zoom,
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)
        url = Path(f"{work}/tiles").as_uri() + "/{z}/{x}/{y}.png"
        xyz = QgsRasterLayer(f"type=xyz&url={url}&zmax={args.zoom}&zmin={args.zoom}", "xyz", "wms")
        layers[f"XYZ tiles from disk (zoom {args.zoom}, RGBA)"] = xyz
        for name, layer in layers.items():
            QgsProject.instance().addMapLayer(layer)
            extent = None
            if layer.providerType() == "wms":  # the scene's extent, in the layer's CRS (EPSG:3857)
                from qgis.core import QgsCoordinateTransform

                extent = QgsCoordinateTransform(base.crs(), layer.crs(), QgsProject.instance()) \
                    .transformBoundingBox(base.extent())
            grid, why = layer_grid(layer, QgsRectangle(extent) if extent else None, None)
            for i in range(args.repeat):
                out = f"{work}/{i}.tif"
                r = export_layer(layer, grid, out)
                print(json.dumps({"layer": name, "run": i + 1, "width": grid.width, "height": grid.height,
                                  "megapixels": round(grid.megapixels, 2), "bands": r.bands,
                                  "seconds": round(r.seconds, 2), "mp_per_s": round(grid.megapixels / r.seconds, 2),
                                  "mb_on_disk": round(r.file_bytes / 1e6, 1), "resolution": why}), flush=True)
                os.remove(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os._exit(0)


if __name__ == "__main__":
    main()
