"""Regenerable tiny test scenes (GeoTIFFs written with rasterio).

Used by fixtures in the foundation tests; each function writes one file and
returns its path. Run ``python tests/scenes.py DIR`` to write them all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

# A custom Albers equal-area CRS without an EPSG code (like many national grids).
ALBERS_WKT = (
    'PROJCS["Custom Albers",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Albers_Conic_Equal_Area"],'
    'PARAMETER["latitude_of_center",23.3],PARAMETER["longitude_of_center",-96.7],'
    'PARAMETER["standard_parallel_1",29.7],PARAMETER["standard_parallel_2",45.3],'
    'PARAMETER["false_easting",1000],PARAMETER["false_northing",2000],UNIT["metre",1]]'
)


def write(path: Path, data: np.ndarray, crs=None, transform=None, nodata=None, tiled=False, **extra) -> Path:
    count, h, w = data.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": count, "dtype": data.dtype.name}
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def rgb_uint8(path: Path, width: int = 1000, height: int = 700) -> Path:
    """uint8 RGB, EPSG:32617, 0.5 m, with a gradient and bright squares."""
    rng = np.random.default_rng(0)
    data = rng.integers(40, 90, size=(3, height, width), dtype=np.uint8)
    data[:, 100:130, 200:230] = 250
    return write(path, data, CRS.from_epsg(32617), Affine(0.5, 0, 404000.0, 0, -0.5, 3285000.0))


def uint16_single(path: Path, width: int = 900, height: int = 650) -> Path:
    """One uint16 band (e.g. a satellite NIR band), EPSG:3857, 10 m."""
    rng = np.random.default_rng(1)
    data = rng.integers(200, 4000, size=(1, height, width)).astype(np.uint16)
    return write(path, data, CRS.from_epsg(3857), Affine(10, 0, 1_000_000, 0, -10, 6_000_000))


def int16_albers(path: Path, width: int = 513, height: int = 389) -> Path:
    """int16, 3 bands, custom Albers WKT without EPSG code; sizes not divisible by the stride."""
    rng = np.random.default_rng(2)
    data = rng.integers(-500, 3000, size=(3, height, width)).astype(np.int16)
    return write(path, data, CRS.from_wkt(ALBERS_WKT), Affine(2.0, 0, 150_000, 0, -2.0, 900_000))


def nodata_border(path: Path, width: int = 800, height: int = 800, border: int = 300) -> Path:
    """uint8 RGB with nodata (0) on a wide left/top border: some tiles are all nodata."""
    rng = np.random.default_rng(3)
    data = rng.integers(20, 200, size=(3, height, width), dtype=np.uint8)
    data[:, :border, :] = 0
    data[:, :, :border] = 0
    data[data == 0] = 0
    data[:, border:, border:] = np.maximum(data[:, border:, border:], 1)
    return write(path, data, CRS.from_epsg(32617), Affine(1, 0, 500_000, 0, -1, 4_000_000), nodata=0)


def small_scene(path: Path, width: int = 300, height: int = 200) -> Path:
    """Smaller than one 640 px tile."""
    data = np.full((3, height, width), 120, dtype=np.uint8)
    return write(path, data, CRS.from_epsg(4326), Affine(0.0001, 0, 10.0, 0, -0.0001, 50.0))


def main(out: str) -> None:
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    for fn in (rgb_uint8, uint16_single, int16_albers, nodata_border, small_scene):
        print(fn(d / f"{fn.__name__}.tif"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "testdata")
