"""Helpers shared by the benchmarks: generated scenes, timing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window


def make_big_scene(path: Path, size: int, bands: int = 3, block: int = 512) -> Path:
    """A tiled, DEFLATE-compressed uint8 GeoTIFF of size x size, written block-row by block-row."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".part.tif")
    profile = dict(driver="GTiff", width=size, height=size, count=bands, dtype="uint8", crs="EPSG:32617",
                   transform=Affine(0.1, 0, 400000.0, 0, -0.1, 3290000.0), tiled=True, blockxsize=block,
                   blockysize=block, compress="deflate", BIGTIFF="IF_SAFER")
    x = np.arange(size, dtype=np.float32)
    with rasterio.open(tmp, "w", **profile) as ds:
        for r in range(0, size, block):
            h = min(block, size - r)
            base = ((x[None, :] + r) * 0.01 % 200).astype(np.uint8)
            noise = rng.integers(0, 24, size=(h, size), dtype=np.uint8)
            arr = np.broadcast_to(base, (h, size)) + noise
            ds.write(np.stack([arr] * bands), window=Window(0, r, size, h))
    os.replace(tmp, path)
    return path


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.seconds = time.perf_counter() - self.t0
