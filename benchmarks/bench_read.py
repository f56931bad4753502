"""Read overhead: all tiles of a 10,000 x 10,000 tiled DEFLATE GeoTIFF through geors
vs plain rasterio window reads of the same windows, in the same run.

Goal (issue 2): geors / rasterio <= 1.1. For reference the same windows are also
read through rioxarray + dask (what peers do).

    python benchmarks/bench_read.py [--size 10000] [--dir /tmp/geors-bench] [--dask]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio

from geors.raster import open_scene
from geors.tiling import TileGrid

from _common import Timer, make_big_scene


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--dir", default="/tmp/geors-bench")
    ap.add_argument("--dask", action="store_true", help="also time rioxarray+dask window reads (slow)")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    path = make_big_scene(d / f"scene_{a.size}.tif", a.size)
    scene = open_scene(path)
    _ = scene.stats  # the one-off scene-wide estimate is not per-tile overhead
    grid = TileGrid(scene, 640, 128)
    wins = [t.window for t in grid]
    print(f"scene {a.size}x{a.size}x3 uint8, {len(grid)} tiles of 640 px (overlap 128)")

    # Each measurement opens its own dataset handle, so no variant profits from
    # blocks another one left in GDAL's cache; best of --repeat runs.
    best = {"rasterio": 1e9, "geors_io": 1e9, "geors_tile": 1e9}
    for _rep in range(a.repeat):
        with rasterio.open(path) as ds, Timer() as t:
            for w in wins:
                ds.read(window=w)
        best["rasterio"] = min(best["rasterio"], t.seconds)
        sc = open_scene(path)
        sc._stats = scene.stats
        with Timer() as t:
            for tile in grid:
                sc.read_raw(tile.window)
        best["geors_io"] = min(best["geors_io"], t.seconds)
        sc.close()
        sc = open_scene(path)
        sc._stats = scene.stats
        with Timer() as t:
            for tile in grid:
                sc.read_tile(tile)
        best["geors_tile"] = min(best["geors_tile"], t.seconds)
        sc.close()
    r = best["rasterio"]
    print(f"rasterio window reads             {r:8.2f} s")
    print(f"geors Scene.read_raw (same I/O)   {best['geors_io']:8.2f} s   ratio {best['geors_io'] / r:.2f}")
    print(f"geors Scene.read_tile (+stretch to float32, valid mask)"
          f" {best['geors_tile']:8.2f} s   ratio {best['geors_tile'] / r:.2f}")
    if a.dask:
        da = scene.data
        with Timer() as t:
            for w in wins[: max(1, len(wins) // 10)]:
                np.asarray(da[:, w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width].compute())
        est = t.seconds * len(wins) / max(1, len(wins) // 10)
        print(f"rioxarray+dask (10% of tiles, extrapolated) {est:8.2f} s   ratio {est / best['rasterio']:.2f}")


if __name__ == "__main__":
    main()
