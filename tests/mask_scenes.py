"""Regenerable synthetic scenes for the mask/label tests: dark textured discs on a bright noisy background.

``python tests/mask_scenes.py DIR`` writes ``discs.tif`` there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

CRS_UTM = CRS.from_epsg(32633)
ORIGIN = (500000.0, 4_000_000.0)
PIXEL = 0.5  # metres
# (cx, cy, r) in scene pixels; one crosses the 256-px tile seams, one is cut by the scene's top edge
DISCS = [(100, 100, 30), (300, 200, 45), (520, 300, 20), (150, 420, 12), (890, 12, 25), (250, 250, 28)]


def disc_image(width: int = 900, height: int = 600, discs=DISCS, seed: int = 1) -> tuple[np.ndarray, list[np.ndarray]]:
    """(H, W, 3) uint8 image and the truth mask (H, W) bool of each disc (pixel centre inside the circle)."""
    rng = np.random.default_rng(seed)
    img = (200 + rng.normal(0, 15, (height, width, 3))).clip(0, 255)
    yy, xx = np.mgrid[:height, :width]
    truth = []
    for cx, cy, r in discs:
        d = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
        img[d] = (60 + rng.normal(0, 20, (int(d.sum()), 3))).clip(0, 255)
        truth.append(d)
    return img.astype(np.uint8), truth


def transform() -> Affine:
    return Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1])


def write_disc_scene(path: Path, width: int = 900, height: int = 600) -> tuple[Path, list[np.ndarray]]:
    img, truth = disc_image(width, height)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs=CRS_UTM, transform=transform()) as dst:
        dst.write(img.transpose(2, 0, 1))
    return Path(path), truth


if __name__ == "__main__":
    write_disc_scene(Path(sys.argv[1]) / "discs.tif")
