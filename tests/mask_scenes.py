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


def roof_scene(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Building-like scene: roofs aligned with the image (each fills its box) on textured ground.

    Roofs are two-facet (a lit and a shaded half, ridge along the long side),
    four-facet (hip) or flat with a darker parapet and roof furniture, with a
    shadow down and to the right. The box of each roof is the roof itself, so
    the box is the right mask and an outline can only lose.
    Returns the (H, W, 3) uint8 image and each roof's truth mask.
    """
    import cv2

    rng = np.random.default_rng(seed)
    h, w = 240, 360
    noise = cv2.resize(rng.normal(0, 1, (h // 12, w // 12)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.stack([120 + 18 * noise, 125 + 15 * noise, 100 + 12 * noise], -1) + rng.normal(0, 6, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]
    # (x0, y0, width, height, style, grey level)
    roofs = [(20, 20, 70, 40, "gable", 150), (120, 15, 44, 60, "hip", 110), (200, 30, 90, 36, "flat", 170),
             (20, 120, 64, 40, "hip", 160), (110, 130, 80, 44, "gable", 95), (230, 120, 60, 80, "flat", 140),
             (40, 190, 36, 24, "gable", 180)]
    truth = []
    for x0, y0, rw, rh, style, grey in roofs:
        m = (xx >= x0) & (xx < x0 + rw) & (yy >= y0) & (yy < y0 + rh)
        sh = np.roll(np.roll(m, 5, 0), 5, 1) & ~m
        img[sh] *= 0.45
        u, v = xx + 0.5 - (x0 + rw / 2), yy + 0.5 - (y0 + rh / 2)
        if rw < rh:
            u, v = v, u
        long_half, short_half = max(rw, rh) / 2, min(rw, rh) / 2
        if style == "gable":
            shade = np.where(v < 0, 1.2, 0.75)
        elif style == "hip":
            shade = np.where(np.abs(u) - (long_half - short_half) > np.abs(v), np.where(u > 0, 1.2, 0.7),
                             np.where(v > 0, 1.05, 0.85))
        else:
            shade = np.ones((h, w))
            rim = m & ~((xx >= x0 + 2) & (xx < x0 + rw - 2) & (yy >= y0 + 2) & (yy < y0 + rh - 2))
            shade = np.where(rim, 0.7, shade)
            for fx, fy in rng.uniform(0.2, 0.8, (3, 2)):
                cx, cy = x0 + fx * rw, y0 + fy * rh
                shade = np.where((np.abs(xx - cx) < 3) & (np.abs(yy - cy) < 3), 1.4, shade)
        roof = grey * shade[..., None] + rng.normal(0, 5, (h, w, 3))
        img[m] = roof[m]
        truth.append(m)
    img = cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (0, 0), 0.7)
    return img, truth
